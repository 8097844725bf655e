"""Load the ServiceDesk payload fixtures kept in tests/fixtures/servicedesk/."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

SERVICEDESK_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "servicedesk"


@functools.cache
def _read(name: str) -> Any:
    return json.loads((SERVICEDESK_FIXTURES / name).read_text(encoding="utf-8"))


def servicedesk_fixture(name: str) -> Any:
    """Return a fresh copy of the parsed fixture `<event>__<variant>` (the `.json` suffix is optional)."""
    filename = name if name.endswith(".json") else f"{name}.json"
    return copy.deepcopy(_read(filename))


def servicedesk_fixture_bytes(name: str) -> bytes:
    """Return the fixture file's exact bytes, for tests that sign or post the raw body."""
    filename = name if name.endswith(".json") else f"{name}.json"
    return (SERVICEDESK_FIXTURES / filename).read_bytes()
