"""The retry and backoff policy, in one place: which layer retries what, how often and how long it waits.

Four layers retry, from the innermost (shortest waits) to the outermost (longest):

1. **The SDP client** (`tickets/sdp/transport.py`, `ServiceDeskTransport._call`): up to `max_retries` (2) more
   tries of one call, waiting `backoff_delay(base=0.5, cap=10)` or SDP's `Retry-After` when it is at most
   10 s (longer waits go back to the caller). A POST is repeated only when SDP certainly did not act on it
   (429, throttled, connection refused); an unclear outcome (timeout, 5xx) is the caller's to check. A 401
   with a Zoho refresh token renews the access token once and repeats the call (`tickets/sdp/auth.py`).
2. **The OpenAI client** (`enhancements/llm_client.py`, `chat_complete`, for the note and triage): timeouts,
   connection errors, 408, 409, 429 (honouring `Retry-After`, not retried past 120 s) and 5xx are retried twice
   with `backoff_delay(base=0.5, cap=8)` (the errors the `openai` package retries itself; its own `max_retries`
   is off): every request sent, each retry included, first reserves its place in the shared budget, so a retry
   that finds it full waits there like a first request (past `LLM_BUDGET_MAX_WAIT`: layer 4's deferral); an answer
   that fails the schema is asked for once more; a server that refuses the output mode (a 400/422 naming it)
   or twice answers no JSON object under it is asked in the next mode (json_schema -> json_object -> prompt),
   never on a timeout, 429 or 5xx; then the offline provider writes the note (labelled as a fallback), so the
   LLM never fails an enhancement.
3. **The import loop** (`tickets/imports/from_sdp.py`, `_patiently`): each SDP call of `import_tickets` gets up to 6
   attempts on top of layer 1, waiting `backoff_delay(base=1, cap=60)` or `Retry-After` (at most 120 s), so an
   import can wait out a throttling window that a webhook-time call must not.
4. **The pipeline's re-queue** (`enhancements/services/processing.py`, `enhancement_retry_later`): a transient
   failure puts the Enhancement row back to `queued` with `next_attempt_at` after
   `backoff_delay(base=ENHANCEMENT_RETRY_BASE, cap=ENHANCEMENT_RETRY_MAX)` (30 s .. 30 min by default, at
   least `Retry-After`), up to `ENHANCEMENT_MAX_ATTEMPTS` (5) attempts, then `failed`. The sweep (every
   minute) enqueues due rows; Django-Q itself never retries a task (`max_attempts: 1`), the row is the truth.
   The other worker jobs that call SDP keep the same rule on their own rows: fetching a resolved ticket's
   text (`tickets/history.py`, `TicketFetch.due_at`, same base, cap and attempts) and checking a
   `request_updated` event (`enhancements/updates.py`, `TicketUpdate`, cap 300 s, `UPDATE_MAX_ATTEMPTS`).
   Waiting for the provider budget shared by all workers (`enhancements/llm_budget.py`: a call waits up to
   `LLM_BUDGET_MAX_WAIT`, then raises `BudgetExhausted`) is not a failure: `enhancement_defer` re-queues the row
   after the budget's wait, without counting the attempt, until `LLM_BUDGET_MAX_DEFER` after its creation;
   the attempt after that writes the offline note and says why.

Permanent failures (`ServiceDeskError(permanent=True)`: 400/401/403/404, bad configuration) are retried by
no layer: they fail at once with the reason.
"""

from __future__ import annotations

import random


def backoff_delay(attempt: int, *, base: float, cap: float) -> float:
    """Return an exponential backoff delay with full jitter for the given 1-based attempt."""
    return random.uniform(base / 2, min(cap, base * 2 ** (attempt - 1)))
