"""The OpenAI client: one per endpoint, key and timeout, and the retries of one request, each through the budget.

The SDK's own retries (`max_retries`) are off: each would send a request the shared budget
(enhancements/llm_budget.py) never saw, so a call the SDK retried twice sent three requests for one reservation and
pods together went past the provider's limit. `chat_complete` retries the errors the SDK retries instead (layer 2
of project/retry.py), reserving before every request it sends: a retry that finds the budget full waits there like
a first request, and raises BudgetExhausted past LLM_BUDGET_MAX_WAIT.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import time
from typing import Any

import openai
from django.conf import settings

from enhancements import llm_budget
from project.retry import backoff_delay

logger = logging.getLogger(__name__)

# Retries of one request (timeouts, connection errors, 408, 409, 429, 5xx).
LLM_RETRIES = 2


# --- clients ----------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def openai_client(base_url: str | None, api_key: str, timeout: float) -> openai.OpenAI:
    """Return one client per endpoint, key and timeout for this process.

    Building a client loads the CA bundle into a new SSL context, which cost most of a task's CPU when done
    per enhancement (docs/benchmarks.md, "Drain").
    """
    return openai.OpenAI(
        api_key=api_key or "not-set",
        base_url=base_url,
        timeout=timeout,
        # The SDK's own retries would send requests the shared budget never saw (three requests for one
        # reservation): `chat_complete` retries instead, reserving for every request it sends.
        max_retries=0,
        # Every 429 also pauses the budget that all processes share (enhancements/llm_budget.py).
        http_client=openai.DefaultHttpxClient(
            event_hooks={"response": [functools.partial(_share_retry_after, base_url, api_key)]}
        ),
    )


def _retry_after(headers: Any) -> float | None:
    """Return the server's Retry-After in seconds (`retry-after-ms` first, as OpenAI sends), None without one."""
    for name, divisor in (("retry-after-ms", 1000), ("retry-after", 1)):
        try:
            return float(headers[name]) / divisor
        except (KeyError, ValueError):
            continue
    try:  # an HTTP date (RFC 9110), which the SDK honoured too
        return email.utils.parsedate_to_datetime(headers["retry-after"]).timestamp() - time.time()
    except (KeyError, TypeError, ValueError):
        return None


def _share_retry_after(base_url: str | None, api_key: str, response: Any) -> None:
    if response.status_code != 429:
        return
    seconds = _retry_after(response.headers)
    seconds = 1.0 if seconds is None else seconds
    logger.warning("the LLM provider answered 429; pausing the shared budget for %.1fs", seconds)
    llm_budget.pause(base_url=base_url, api_key=api_key, seconds=min(seconds, 60.0))


def _retry_wait(exc: openai.OpenAIError, retry: int) -> float | None:
    """Return the seconds to wait before retrying this failure, None when it is not retried.

    The openai SDK's rules (`_should_retry` in openai/_base_client.py), which its `max_retries` applied before:
    timeouts and connection errors, 408, 409, 429 and 5xx, unless `x-should-retry` says otherwise or the
    Retry-After is over two minutes; a positive Retry-After is honoured, else exponential backoff from 0.5 s.
    """
    if retry >= LLM_RETRIES:
        return None
    backoff = backoff_delay(retry + 1, base=0.5, cap=8.0)
    if isinstance(exc, openai.APIConnectionError):  # APITimeoutError too
        return backoff
    if not isinstance(exc, openai.APIStatusError):
        return None
    headers, status = exc.response.headers, exc.status_code
    after = _retry_after(headers)
    hint = headers.get("x-should-retry")
    if (after is not None and after > 120) or hint == "false":
        return None
    if hint != "true" and status not in (408, 409, 429) and status < 500:
        return None
    return after if after is not None and after > 0 else backoff


def chat_complete(client: openai.OpenAI, *, base_url: str | None, api_key: str, tokens: int, **request: Any) -> Any:
    """Return the completion; retry transient failures, each request sent first reserving its place in the budget.

    Raises the last openai error, or BudgetExhausted when the budget has no room within LLM_BUDGET_MAX_WAIT.
    Retries and their budget waits stop at half of Q_TIMEOUT from the start of the call, leaving time for one
    more request (LLM_TIMEOUT): the task's other stages, and the task itself, must not be killed mid-call by
    django-q's timeout (three budget waits, three requests and two Retry-After sleeps could reach 510 s).
    """
    retry = 0
    deadline = time.monotonic() + settings.Q_TIMEOUT / 2
    max_wait: float | None = None  # the first request waits for the budget as long as any
    while True:
        llm_budget.reserve(base_url=base_url, api_key=api_key, tokens=tokens, max_wait=max_wait)
        try:
            return client.chat.completions.create(**request)
        except openai.OpenAIError as exc:
            if isinstance(exc, openai.APIStatusError):
                # An error answer used no tokens: give the estimate back (the request stays spent). A timeout or
                # a dropped connection keeps it: the provider bills a request that completed on its side; the
                # budget drains it within the minute (tests/test_llm_budget.py).
                llm_budget.settle(base_url=base_url, api_key=api_key, reserved=tokens, used=0)
            wait = _retry_wait(exc, retry)
            if wait is None:
                raise
            left = deadline - time.monotonic() - wait - settings.LLM_TIMEOUT
            if left < 0:
                logger.warning("LLM request failed (%s); no time left in this attempt for a retry", exc)
                raise
            max_wait = left
            retry += 1
            logger.info("LLM request failed (%s); retry %d of %d in %.1fs", exc, retry, LLM_RETRIES, wait)
            time.sleep(wait)
