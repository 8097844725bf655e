"""Values every supported database can store: find what JSON parses but SQLite or PostgreSQL refuse.

Python's json module reads `NaN`, `Infinity`, `-Infinity` and numbers beyond float range (`1e400` becomes
infinity), and `\\ud800` escapes that are not text. PostgreSQL's jsonb refuses non-finite numbers, unpaired
surrogates and `\\u0000`; its text columns refuse NUL characters; SQLite's JSON_VALID check refuses the
non-finite numbers too. Integers of any size are fine for both (jsonb stores numeric, SQLite keeps the text),
and json itself refuses integers of more than 4300 digits.

Input from a sender who can be told (a webhook) is refused with the path of the first bad value; input we
cannot send back (an SDP answer, a model's answer) is repaired.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 32

_SURROGATE = re.compile("[\ud800-\udfff]")


class UnstorableValue(ValueError):
    """A value no supported database can store, with the path (e.g. ["request", "x", 0]) where it was found."""

    def __init__(self, path: list[str | int], message: str) -> None:
        self.path = path
        # A key may itself hold the surrogate being reported: show it escaped.
        self.where = ".".join(_SURROGATE.sub(lambda m: f"\\u{ord(m[0]):04x}", str(p)) for p in path) or "The body"
        super().__init__(f"{self.where} {message}")

    def fields(self) -> dict[str, Any]:
        """Return the error nested by path, in the shape of DRF validation errors."""
        error: Any = [str(self)]
        for part in reversed(self.path or ["non_field_errors"]):
            error = {str(part): error}
        return error


def _number_name(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def storable_json(value: Any, *, repair: bool = False, _path: list[str | int] | None = None) -> Any:
    """Return value with NUL characters removed; raise UnstorableValue for what no database can store.

    With repair=True nothing is raised: non-finite numbers become None, unpaired surrogates U+FFFD and
    values nested deeper than MAX_DEPTH None.
    """
    path = _path or []
    if isinstance(value, str):
        if _SURROGATE.search(value):
            if not repair:
                raise UnstorableValue(
                    path, "contains an unpaired UTF-16 surrogate (\\ud800-\\udfff), which is not text."
                )
            value = _SURROGATE.sub("\ufffd", value)
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if repair:
            return None
        raise UnstorableValue(
            path,
            f"is {_number_name(value)} (or a number beyond the float range, such as 1e400), which JSON "
            "storage cannot hold; send a finite number, null or a string.",
        )
    if isinstance(value, dict | list):
        if len(path) > MAX_DEPTH:
            if repair:
                return None
            raise UnstorableValue(path, f"is nested more than {MAX_DEPTH} levels deep.")
        if isinstance(value, list):
            return [storable_json(v, repair=repair, _path=[*path, i]) for i, v in enumerate(value)]
        return {
            storable_json(str(k), repair=repair, _path=[*path, str(k)]): storable_json(
                v, repair=repair, _path=[*path, str(k)]
            )
            for k, v in value.items()
        }
    return value


# The escapes in a JSON text that parse into what storable_json removes or refuses: \u0000 and UTF-16 surrogates
# (a paired one is fine, but then the full walk decides). Numbers are the parser's to report (json_loads_checked).
_MAYBE_UNSTORABLE = re.compile(rb"\\u0000|\\u[dD][89a-fA-F]")


def json_loads_checked(body: bytes) -> tuple[Any, bool]:
    """Return the parsed body and whether storable_json would return it unchanged (False: walk it to know)."""
    finite = True

    def number(text: str) -> float:
        nonlocal finite
        value = float(text)
        finite = finite and math.isfinite(value)
        return value

    def constant(name: str) -> float:
        nonlocal finite
        finite = False
        return float(name)

    payload = json.loads(body.decode("utf-8"), parse_float=number, parse_constant=constant)
    plain = finite and body.count(b"{") + body.count(b"[") <= MAX_DEPTH and not _MAYBE_UNSTORABLE.search(body)
    return payload, plain


def storable_text(value: str) -> str:
    """Return text a text column of every supported database accepts (no NUL, no unpaired surrogate)."""
    return _SURROGATE.sub("\ufffd", value).replace("\x00", "")
