"""One provider budget per LLM key for the whole deployment: requests and tokens per minute, kept in Redis.

Providers cap requests (RPM) and tokens (TPM) per minute per key, and answer 429 past them; ten worker pods that
each back off only after their own 429s keep hitting it. Every LLM call first reserves one request and its
estimated tokens (prompt characters / 4 plus `LLM_COMPLETION_TOKENS_ESTIMATE`) from a budget shared by every
process through Redis, and waits while the budget is spent; afterwards the estimate is corrected with the tokens
the provider reported. A 429 the provider sends anyway pauses the whole budget for its Retry-After.

The budget is a GCRA (generic cell rate algorithm, a token bucket kept as one timestamp per stream): a stream
with a limit of L per minute advances its "theoretical arrival time" by 60/L s per unit spent, and a reservation
is allowed while that time is at most `LLM_BUDGET_BURST_SECONDS` ahead of now, so the calls spread evenly over
the minute (providers may enforce a minute's limit over shorter windows) and a burst never exceeds that many
seconds' worth. One Lua script checks and spends both streams atomically. Without Redis (local runs) the same
algorithm runs per process.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from dataclasses import dataclass

import redis
from django.conf import settings

logger = logging.getLogger(__name__)

# Redis's clock, not the callers': every pod reads the same one. (Scripts may write after TIME since Redis 5.)
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
"""
# KEYS: requests TAT, tokens TAT (ms since the epoch, as decimal strings).
# ARGV: unused, ms per request, ms per token (0: that stream is unlimited), tokens, tolerance ms, expiry ms.
# Returns {allowed (1/0), wait ms}.
_RESERVE = (
    _NOW
    + """
local per_request, per_token = tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, tolerance, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local function next_tat(key, cost)
  if cost <= 0 then return nil, 0 end
  local tat = math.max(tonumber(redis.call('GET', key) or '0'), now)
  local new = tat + cost
  -- An empty bucket admits any single reservation, even one larger than the burst.
  if tat > now and new - now > tolerance then return nil, new - tolerance - now end
  return new, 0
end
local req_tat, req_wait = next_tat(KEYS[1], per_request)
local tok_tat, tok_wait = next_tat(KEYS[2], per_token * tokens)
local wait = math.max(req_wait, tok_wait)
if wait > 0 then return {0, math.ceil(wait)} end
if req_tat then redis.call('SET', KEYS[1], tostring(req_tat), 'PX', ttl) end
if tok_tat then redis.call('SET', KEYS[2], tostring(tok_tat), 'PX', ttl) end
return {1, 0}
"""
)
# KEYS: tokens TAT. ARGV: unused, ms to add (negative: give back), expiry ms.
_ADJUST = (
    _NOW
    + """
local delta, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now and delta < 0 then return 0 end
redis.call('SET', KEYS[1], tostring(math.max(tat + delta, now)), 'PX', ttl)
return 1
"""
)
# KEYS: both TATs. ARGV: seconds from now during which nothing may be spent, expiry ms.
_PAUSE = (
    _NOW
    + """
local until_ms = now + tonumber(ARGV[1]) * 1000
for _, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < until_ms then redis.call('SET', key, tostring(until_ms), 'PX', ARGV[2]) end
end
return 1
"""
)


class BudgetExhausted(Exception):
    """The shared LLM budget had no room within LLM_BUDGET_MAX_WAIT: try the enhancement again later."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Limits:
    """Milliseconds each request and each token takes from the budget (0: not limited)."""

    ms_per_request: float
    ms_per_token: float
    tolerance_ms: float

    @property
    def active(self) -> bool:
        """Return whether any limit is set."""
        return self.ms_per_request > 0 or self.ms_per_token > 0


def limits() -> Limits:
    """Return the configured limits."""
    rpm, tpm = settings.LLM_REQUESTS_PER_MINUTE, settings.LLM_TOKENS_PER_MINUTE
    return Limits(
        ms_per_request=60_000 / rpm if rpm > 0 else 0.0,
        ms_per_token=60_000 / tpm if tpm > 0 else 0.0,
        tolerance_ms=settings.LLM_BUDGET_BURST_SECONDS * 1000,
    )


def estimate_tokens(prompt_chars: int) -> int:
    """Return the tokens a call is expected to use: about four characters a token, plus the answer."""
    return prompt_chars // 4 + settings.LLM_COMPLETION_TOKENS_ESTIMATE


def _keys(base_url: str | None, api_key: str) -> tuple[str, str]:
    # Per key and endpoint, never the key itself.
    digest = hashlib.sha256(f"{base_url or 'openai'}\0{api_key}".encode()).hexdigest()[:16]
    return f"llm-budget:{digest}:requests", f"llm-budget:{digest}:tokens"


@functools.cache
def _redis() -> redis.Redis | None:
    if not settings.REDIS_URL:
        return None
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2)


class _LocalStore:
    """The same algorithm for one process (no Redis: local runs and the SQLite test run)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tat: dict[str, float] = {}

    def reserve(self, keys: tuple[str, str], now: float, lim: Limits, tokens: int) -> float:
        with self.lock:
            new: dict[str, float] = {}
            wait = 0.0
            for key, cost in zip(keys, (lim.ms_per_request, lim.ms_per_token * tokens), strict=True):
                if cost <= 0:
                    continue
                tat = max(self.tat.get(key, 0.0), now)
                if tat > now and tat + cost - now > lim.tolerance_ms:
                    wait = max(wait, tat + cost - lim.tolerance_ms - now)
                new[key] = tat + cost
            if wait > 0:
                return wait
            self.tat.update(new)
            return 0.0

    def adjust(self, key: str, now: float, delta: float) -> None:
        with self.lock:
            tat = self.tat.get(key, 0.0)
            if tat < now and delta < 0:
                return
            self.tat[key] = max(tat + delta, now)

    def pause(self, keys: tuple[str, str], until: float) -> None:
        with self.lock:
            for key in keys:
                self.tat[key] = max(self.tat.get(key, 0.0), until)


_local = _LocalStore()
_TTL_MS = 120_000


def _now_ms() -> float:
    return time.time() * 1000


def _try_reserve(keys: tuple[str, str], lim: Limits, tokens: int) -> float:
    client = _redis()
    if client is None:
        return _local.reserve(keys, _now_ms(), lim, tokens)
    try:
        allowed, wait = client.eval(
            _RESERVE, 2, *keys, 0, lim.ms_per_request, lim.ms_per_token, tokens, lim.tolerance_ms, _TTL_MS
        )
    except redis.RedisError as exc:
        # The provider's own 429 handling still applies; a Redis outage must not stop the pipeline.
        logger.warning("LLM budget: Redis did not answer (%s); calling without the shared budget", exc)
        return 0.0
    return 0.0 if allowed else float(wait)


def reserve(*, base_url: str | None, api_key: str, tokens: int, max_wait: float | None = None) -> None:
    """Wait until the shared budget has room for one request of `tokens`; raise BudgetExhausted past the wait
    (LLM_BUDGET_MAX_WAIT, or max_wait when that is shorter)."""
    lim = limits()
    if not lim.active:
        return
    keys = _keys(base_url, api_key)
    longest = settings.LLM_BUDGET_MAX_WAIT if max_wait is None else min(settings.LLM_BUDGET_MAX_WAIT, max_wait)
    deadline = time.monotonic() + longest
    waited = 0.0
    while True:
        wait_ms = _try_reserve(keys, lim, tokens)
        if wait_ms <= 0:
            if waited >= 1:
                logger.info("LLM budget: waited %.1fs for room", waited)
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise BudgetExhausted(
                f"The LLM budget (LLM_REQUESTS_PER_MINUTE={settings.LLM_REQUESTS_PER_MINUTE}, "
                f"LLM_TOKENS_PER_MINUTE={settings.LLM_TOKENS_PER_MINUTE}) had no room for "
                f"{longest:.0f}s; the enhancement is retried later.",
                retry_after=wait_ms / 1000,
            )
        # Sleep until the budget should have room; at most 5 s, then look again.
        pause = min(wait_ms / 1000, left, 5.0)
        time.sleep(pause)
        waited += pause


def settle(*, base_url: str | None, api_key: str, reserved: int, used: int | None) -> None:
    """Correct the token reservation with the tokens the provider reported using."""
    lim = limits()
    if lim.ms_per_token <= 0 or used is None or used == reserved:
        return
    key = _keys(base_url, api_key)[1]
    delta = (used - reserved) * lim.ms_per_token
    client = _redis()
    if client is None:
        _local.adjust(key, _now_ms(), delta)
        return
    try:
        client.eval(_ADJUST, 1, key, 0, delta, _TTL_MS)
    except redis.RedisError as exc:
        logger.warning("LLM budget: could not settle the token count (%s)", exc)


def pause(*, base_url: str | None, api_key: str, seconds: float) -> None:
    """Stop every process from spending the budget for `seconds` (the provider answered 429)."""
    if not limits().active or seconds <= 0:
        return
    keys = _keys(base_url, api_key)
    client = _redis()
    if client is None:
        _local.pause(keys, _now_ms() + seconds * 1000)
        return
    try:
        client.eval(_PAUSE, 2, *keys, seconds, _TTL_MS)
    except redis.RedisError as exc:
        logger.warning("LLM budget: could not share the provider's Retry-After (%s)", exc)
