"""Business logic of the enhancement side, one module per sub-domain.

- `pipeline`: webhook intake (a new ticket and its queued enhancement), re-runs and enqueueing.
- `processing`: claiming, the pipeline's stages, posting once, retries and failures.
- `sweep`: re-enqueueing due or lost rows and recovering rows whose worker died.
- `review`: the actions of support leads (approve, edit, reject, re-run, re-post).
- `feedback`: ratings.
- `tokens`: API tokens.
The note itself (rendering, escaping, sanitising, the marker) lives in `enhancements.render`.
"""

from enhancements.services.feedback import feedback_create
from enhancements.services.pipeline import (
    TASK_PROCESS,
    WebhookOutcome,
    enhancement_create_from_webhook,
    enhancement_enqueue,
    enhancement_rerun,
    webhook_fast_path_available,
)
from enhancements.services.processing import (
    PermanentError,
    enhancement_claim,
    enhancement_fail,
    enhancement_post,
    enhancement_process,
    enhancement_retry_later,
)
from enhancements.services.review import (
    APPROVAL_CLAIM_EXPIRES,
    ReviewResult,
    enhancement_approve,
    enhancement_note_update,
    enhancement_reject,
    enhancement_repost,
    enhancement_rerun_request,
)
from enhancements.services.sweep import enhancement_sweep
from enhancements.services.tokens import (
    API_TOKEN_PREFIX,
    api_token_authenticate,
    api_token_create,
    api_token_revoke,
)

__all__ = [
    "API_TOKEN_PREFIX",
    "APPROVAL_CLAIM_EXPIRES",
    "TASK_PROCESS",
    "PermanentError",
    "ReviewResult",
    "WebhookOutcome",
    "api_token_authenticate",
    "api_token_create",
    "api_token_revoke",
    "enhancement_approve",
    "enhancement_claim",
    "enhancement_create_from_webhook",
    "enhancement_enqueue",
    "enhancement_fail",
    "enhancement_note_update",
    "enhancement_post",
    "enhancement_process",
    "enhancement_reject",
    "enhancement_repost",
    "enhancement_rerun",
    "enhancement_rerun_request",
    "enhancement_retry_later",
    "enhancement_sweep",
    "feedback_create",
    "webhook_fast_path_available",
]
