"""The one client for ManageEngine ServiceDesk Plus API v3 (facts: docs/servicedesk-api.md): its endpoints.

The session, retries and answer parsing are in `transport.py`, the error type in `errors.py`, the base-URL
check in `addresses.py`; their public names stay importable from here, where callers import them.
"""

from __future__ import annotations

from typing import Any

from tickets.sdp.addresses import check_base_url
from tickets.sdp.errors import ServiceDeskError
from tickets.sdp.transport import MAX_ROW_COUNT, Page, ServiceDeskTransport

__all__ = ["MAX_ROW_COUNT", "Page", "ServiceDeskClient", "ServiceDeskError", "check_base_url"]


class ServiceDeskClient(ServiceDeskTransport):
    """Calls one tenant's SDP; every call has a timeout and bounded retries (layer 1 of project/retry.py)."""

    # --- calls ------------------------------------------------------------------------------
    def get_request(self, request_id: str) -> dict[str, Any]:
        """Return the v3 request object for request_id."""
        body = self._call("GET", f"/requests/{request_id}", idempotent=True)
        request = body.get("request")
        if not isinstance(request, dict):
            raise ServiceDeskError("SDP answered without a request object.", permanent=False)
        return request

    def list_requests(
        self,
        *,
        start_index: int = 1,
        row_count: int = MAX_ROW_COUNT,
        search_criteria: list[dict[str, Any]] | None = None,
        sort_field: str = "created_time",
        sort_order: str = "asc",
    ) -> Page:
        """Return one page of requests matching search_criteria."""
        list_info: dict[str, Any] = {
            "row_count": min(row_count, MAX_ROW_COUNT),
            "start_index": start_index,
            "sort_field": sort_field,
            "sort_order": sort_order,
            "get_total_count": True,
        }
        if search_criteria:
            list_info["search_criteria"] = search_criteria
        body = self._call("GET", "/requests", input_data={"list_info": list_info}, idempotent=True)
        return self._page(body, "requests")

    def list_notes(self, request_id: str) -> list[dict[str, Any]]:
        """Return every note of a request (all pages)."""
        return self.list_all(f"/requests/{request_id}/notes", "request_notes", fallback_key="notes")

    def add_note(self, request_id: str, description_html: str) -> dict[str, Any]:
        """Post a technician-only note and return SDP's note object."""
        note = {
            "description": description_html,
            "show_to_requester": False,
            "notify_technician": False,
            "mark_first_response": False,
            "add_to_linked_requests": False,
        }
        try:
            body = self._call("POST", f"/requests/{request_id}/notes", input_data={"request_note": note})
        except ServiceDeskError as exc:
            # Some on-premises builds want the key `note` and reject `request_note` as an extra key
            # (docs/servicedesk-api.md, "add a note"): retry once with the other key.
            if exc.status == 400 and ("request_note" in str(exc) or "EXTRA_KEY" in str(exc)):
                body = self._call("POST", f"/requests/{request_id}/notes", input_data={"note": note})
            else:
                raise
        created = body.get("request_note") or body.get("note")
        if not isinstance(created, dict):
            raise ServiceDeskError("SDP accepted the note but returned no note object.", permanent=False, unclear=True)
        return created

    def link_requests(self, request_id: str, linked_ids: list[str], *, comments: str = "") -> dict[str, Any]:
        """Link requests to request_id (POST /requests/{id}/link_requests) and return SDP's answer."""
        links = [{"linked_request": {"id": str(other)}, "comments": comments} for other in linked_ids]
        # Linking twice is harmless (SDP keeps one link), so a retry after an unclear outcome is safe.
        return self._call(
            "POST", f"/requests/{request_id}/link_requests", input_data={"link_requests": links}, idempotent=True
        )

    def list_conversations(self, request_id: str) -> list[dict[str, Any]]:
        """Return the request's conversations (requester replies and e-mails; SDP lists notes separately)."""
        return self.list_all(f"/requests/{request_id}/conversations", "conversations", max_pages=20)

    def list_all(
        self,
        path: str,
        key: str,
        *,
        search_criteria: list[dict[str, Any]] | None = None,
        max_pages: int = 100,
        fallback_key: str | None = None,
    ) -> list[dict[str, Any]]:
        """Return every row of a v3 list endpoint (e.g. `/categories`, key `categories`, or `fallback_key`)."""
        rows: list[dict[str, Any]] = []
        start = 1
        for _ in range(max_pages):
            list_info: dict[str, Any] = {"row_count": MAX_ROW_COUNT, "start_index": start}
            if search_criteria:
                list_info["search_criteria"] = search_criteria
            body = self._call("GET", path, input_data={"list_info": list_info}, idempotent=True)
            page = self._page(body, key, fallback_key=fallback_key)
            rows.extend(page.rows)
            if not page.has_more_rows or not page.rows:
                break
            start = page.start_index + page.row_count
        return rows

    def update_request(self, request_id: str, fields: dict[str, Any], *, reason: str = "") -> dict[str, Any]:
        """Change fields of a request (`PUT /requests/{id}`) and return SDP's request object.

        `reason` goes in `update_reason` (shown in the request's history); builds that reject the key as
        extra get the update once more without it. Like a note, the PUT is retried here only when SDP certainly
        did not act on it; an unclear outcome goes back to the caller, who reads the request before writing
        again (a person may have changed the field meanwhile).
        """
        changes = dict(fields, update_reason=reason) if reason else dict(fields)
        try:
            body = self._call("PUT", f"/requests/{request_id}", input_data={"request": changes})
        except ServiceDeskError as exc:
            if reason and exc.status == 400 and ("update_reason" in str(exc) or "EXTRA_KEY" in str(exc)):
                body = self._call("PUT", f"/requests/{request_id}", input_data={"request": dict(fields)})
            else:
                raise
        request = body.get("request")
        if not isinstance(request, dict):
            raise ServiceDeskError("SDP accepted the update but returned no request object.", permanent=False)
        return request
