"""The output mode remembered per endpoint, model and schema (enhancements/llm_structured.py negotiates it).

The mode that worked is remembered per endpoint, model and schema (base URL + model + a hash of the schema's
JSON: the note's and triage's schemas differ, and a grammar backend may take one and refuse the other) for
`MODE_TTL` seconds, in Redis when REDIS_URL is set (every worker shares it) and in-process otherwise; the next
call starts there, and an upgraded server is probed again from the top once the day is over. When a call found
that no mode works (the response_formats refused or ignored, then no JSON object in the prompt mode twice),
that is remembered as `PROMPT_UNPROVEN`: one ticket's answer may be prose for reasons of its own (a refusal, an
injected "answer in prose"), so the next call tries the prompt mode once more. Only when that call gets no JSON
object either is the endpoint remembered as `NONE` for `NONE_TTL` seconds (an hour): the calls in that hour fail
at once, without a request, to the labelled offline note (each note would otherwise cost up to six generations,
which can take longer than ENHANCEMENT_STUCK_AFTER), and the endpoint is probed again after it. Once the prompt
mode has given JSON it is remembered as `prompt`, and its failing for one ticket is that ticket's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import Any

import redis

from enhancements import llm_budget

logger = logging.getLogger(__name__)

MODES = ("json_schema", "json_object", "prompt")
MODE_TTL = 24 * 3600
NONE = "none"  # remembered when no mode works for an endpoint, model and schema
NONE_TTL = 3600
# Remembered when one call found no mode works: the next call tries the prompt mode once more before NONE.
PROMPT_UNPROVEN = "prompt-unproven"

_local_modes: dict[str, tuple[str, float]] = {}
_local_lock = threading.Lock()
_KEY_PREFIX = "llm-mode:"


def _mode_key(base_url: str | None, model: str, schema: dict[str, Any]) -> str:
    schema_json = json.dumps(schema, sort_keys=True, separators=(",", ":"), default=str)
    return _KEY_PREFIX + hashlib.sha256(f"{base_url or 'openai'}\0{model}\0{schema_json}".encode()).hexdigest()[:16]


def _redis() -> redis.Redis | None:
    return llm_budget._redis()


def mode_remembered(*, base_url: str | None, model: str, schema: dict[str, Any]) -> str | None:
    """Return the output mode that last worked for this endpoint, model and schema (NONE: none did), if remembered."""
    key = _mode_key(base_url, model, schema)
    client = _redis()
    if client is not None:
        try:
            value = client.get(key)
        except redis.RedisError as exc:
            logger.warning("LLM mode: Redis did not answer (%s); using this process's memory", exc)
        else:
            mode = value.decode() if isinstance(value, bytes) else value
            return mode if mode in (*MODES, NONE, PROMPT_UNPROVEN) else None
    with _local_lock:
        mode, expires = _local_modes.get(key, ("", 0.0))
    return mode if mode and expires > time.monotonic() else None


def mode_remember(*, base_url: str | None, model: str, schema: dict[str, Any], mode: str) -> None:
    """Remember the output mode that worked for this endpoint, model and schema (MODE_TTL; NONE: NONE_TTL)."""
    key = _mode_key(base_url, model, schema)
    ttl = NONE_TTL if mode in (NONE, PROMPT_UNPROVEN) else MODE_TTL
    with _local_lock:
        _local_modes[key] = (mode, time.monotonic() + ttl)
    client = _redis()
    if client is not None:
        try:
            client.set(key, mode, ex=ttl)
        except redis.RedisError as exc:
            logger.warning("LLM mode: could not share the mode in Redis (%s)", exc)


def modes_forget() -> None:
    """Forget every remembered mode (the next calls probe their endpoints again from json_schema)."""
    with _local_lock:
        _local_modes.clear()
    client = _redis()
    if client is not None:
        try:
            keys = list(client.scan_iter(match=f"{_KEY_PREFIX}*", count=500))
            if keys:
                client.delete(*keys)
        except redis.RedisError as exc:
            logger.warning("LLM mode: could not clear the modes in Redis (%s)", exc)
