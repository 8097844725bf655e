"""Real HTTP servers on loopback that behave like ServiceDesk Plus and an OpenAI-compatible API."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fakes._http import RecordedRequest
    from tests.fakes.fixtures import servicedesk_fixture, servicedesk_fixture_bytes
    from tests.fakes.openai import FakeOpenAI
    from tests.fakes.sdp import FakeServiceDesk

__all__ = ["FakeOpenAI", "FakeServiceDesk", "RecordedRequest", "servicedesk_fixture", "servicedesk_fixture_bytes"]

_HOMES = {
    "FakeOpenAI": "tests.fakes.openai",
    "FakeServiceDesk": "tests.fakes.sdp",
    "RecordedRequest": "tests.fakes._http",
    "servicedesk_fixture": "tests.fakes.fixtures",
    "servicedesk_fixture_bytes": "tests.fakes.fixtures",
}


def __getattr__(name: str) -> Any:
    """Return a public name, importing its module on first use."""
    # Eager imports would make `python -m tests.fakes.sdp` import sdp twice (runpy's RuntimeWarning).
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
