"""The one error type of the SDP package: `ServiceDeskError(permanent=...)` says whether retrying can help."""

from __future__ import annotations


class ServiceDeskError(Exception):
    """A failed SDP call; `permanent` says whether retrying can help."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool,
        status: int | None = None,
        retry_after: float | None = None,
        unclear: bool = False,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status = status
        self.retry_after = retry_after
        # The request may have reached SDP (e.g. a timeout after sending a note).
        self.unclear = unclear
