"""Reading a model's answer tolerantly: one JSON object, whole, in a Markdown fence or amid prose.

Used by enhancements/llm_structured.py for every output mode; the caller then makes the value storable and
validates it against the schema.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from typing import Any

MAX_CONTENT_CHARS = 50_000  # an answer longer than this is not scanned for JSON objects
_MAX_CANDIDATES = 20
_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\r?\n?(.*?)```", re.DOTALL)


def _loads(text: str) -> Any:
    # strict=False accepts raw newlines and tabs inside strings, which small models write.
    try:
        value = json.loads(text, strict=False)
        if isinstance(value, str) and value.lstrip().startswith("{"):
            # A JSON object sent as a JSON string ("{\"summary\": ...}").
            value = json.loads(value, strict=False)
    except RecursionError as exc:  # nested past the parser's depth: no answer of ours is, so it is not one
        raise ValueError("the answer nests deeper than the JSON parser allows") from exc
    return value


def json_document(content: str) -> dict[str, Any]:
    """Return the content parsed as one JSON object (surrounding whitespace allowed); raise ValueError."""
    value = _loads(content.strip())
    if not isinstance(value, dict):
        raise ValueError(f"the answer is JSON but a {type(value).__name__}, not an object")
    return value


def _balanced_objects(text: str) -> Iterator[str]:
    """Yield candidate `{...}` spans in order of their start: balanced braces outside strings.

    At most _MAX_CANDIDATES starts are tried, so an answer of 50,000 unclosed braces costs a bounded scan.
    """
    start, tries = text.find("{"), 0
    while start != -1 and tries < _MAX_CANDIDATES:
        tries += 1
        depth, in_string, escaped = 0, False, False
        for index in range(start, len(text)):
            char = text[index]
            if in_string:
                if escaped:
                    escaped = False
                elif char == "\\":
                    escaped = True
                elif char == '"':
                    in_string = False
            elif char == '"':
                in_string = True
            elif char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    yield text[start : index + 1]
                    break
        start = text.find("{", start + 1)


def json_extract(content: str) -> dict[str, Any]:
    """Return the first JSON object in a model's answer: whole, in a Markdown fence, or amid prose; raise ValueError."""
    text = content[:MAX_CONTENT_CHARS]
    try:
        return json_document(text)
    except ValueError:
        pass
    for candidate in itertools.chain(_FENCE.findall(text), _balanced_objects(text)):
        try:
            return json_document(candidate)
        except ValueError:
            continue
    raise ValueError("the answer holds no JSON object")


def schema_instruction(schema: dict[str, Any]) -> str:
    """Return the text that tells a model without enforced structure which JSON to write."""
    return (
        "\n\nAnswer with exactly one JSON object and nothing else: no Markdown fences, no text before or after it. "
        "It must be valid against this JSON Schema (every listed property present):\n<json_schema>\n"
        + json.dumps(schema, ensure_ascii=False, separators=(",", ":"))
        + "\n</json_schema>"
    )
