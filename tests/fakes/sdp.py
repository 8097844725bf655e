"""A fake ManageEngine ServiceDesk Plus API v3 served over real HTTP on loopback.

Usage in a test::

    with FakeServiceDesk(auth="authtoken", api_key="k") as sdp:
        sdp.add_request(servicedesk_fixture("api__get_request"))
        tenant.sdp_base_url = sdp.url            # the API lives under f"{sdp.url}/api/v3/..."
        ...
        assert sdp.notes["104322"][0]["show_to_requester"] is False

Injected failures (`fail_next(status=...)`): any HTTP status as an int (401 answers the auth envelope, 429 and
the others a failed envelope, `Retry-After` when `retry_after` is given, `body` replaces the answer body);
"throttle_4015" (HTTP 400, inner code 4015); "throttle_4015_200" (the same envelope with HTTP 200);
"timeout" (answer only after `delay` seconds; `process=True` stores the side effect first, `process=False`
stores nothing and finally answers 504); "disconnect" (close the connection without an answer).

Lists (`set_choices(...)`): categories, subcategories (filterable by `category.id`), priorities, support groups
and technicians answer `GET /api/v3/<list>` with paging like requests. Once a list is set, `PUT
/api/v3/requests/{id}` refuses a value outside it (HTTP 400, inner code 4001 naming the field) as SDP does, and a
subcategory that is not under the request's category. `updates[request_id]` keeps every accepted PUT with its
`update_reason`. `groups_path="groups"` serves groups where older on-premises builds do (`/api/v3/groups`).
`on_get_request` is called with the id while a GET of one request waits for its answer (a race, made to happen).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from tests.fakes._http import Failure, FakeServer, RecordedRequest, Reply
from tests.fakes.fixtures import servicedesk_fixture

ACCEPT = "application/vnd.manageengine.sdp.v3+json"
FORM_TYPE = "application/x-www-form-urlencoded"
THROTTLE_MESSAGE = "URL blocked as maximum access limit for the API has been reached"
# SDP's default page size (10 in its list_info docs; unverified on live builds): callers that forget to page
# must notice in tests, not in production.
DEFAULT_ROW_COUNT = 10
MAX_ROW_COUNT = 100
LIST_OMITS = ("description", "resolution")

AuthType = Literal["authtoken", "zoho_oauth"]
NoteKey = Literal["request_note", "note"]

_REQUEST = re.compile(r"^/api/v3/requests/(?P<id>[^/]+)/?$")
_NOTES = re.compile(r"^/api/v3/requests/(?P<id>[^/]+)/notes/?$")
_REQUESTS = re.compile(r"^/api/v3/requests/?$")
_LINKS = re.compile(r"^/api/v3/requests/(?P<id>[^/]+)/link_requests/?$")
_CONVERSATIONS = re.compile(r"^/api/v3/requests/(?P<id>[^/]+)/conversations/?$")
_LIST = re.compile(r"^/api/v3/(?P<kind>categories|subcategories|priorities|support_groups|groups|technicians)/?$")
# Request fields that name a record of a list: the PUT refuses values outside the list.
LINKED_FIELDS = {
    "category": "categories",
    "subcategory": "subcategories",
    "priority": "priorities",
    "group": "support_groups",
    "technician": "technicians",
}
INVALID_VALUE = 4001

SUCCESS = {"status_code": 2000, "status": "success"}


def failed_envelope(message: str, *, code: int = 4000, field: str | None = None) -> dict[str, Any]:
    """Return SDP's failed envelope with one message."""
    detail: dict[str, Any] = {"status_code": code, "type": "failed", "message": message}
    if field is not None:
        detail["field"] = field
    return {"response_status": {"status_code": 4000, "status": "failed", "messages": [detail]}}


def sdp_time(epoch_ms: int | None = None) -> dict[str, str]:
    """Return an SDP time object for the given epoch milliseconds (now by default)."""
    ms = int(time.time() * 1000) if epoch_ms is None else epoch_ms
    shown = datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%b %d, %Y %I:%M %p")
    return {"value": str(ms), "display_value": shown}


class _BadInputError(Exception):
    def __init__(self, message: str, field: str | None = None, code: int = 4000) -> None:
        super().__init__(message)
        self.message, self.field, self.code = message, field, code

    def reply(self) -> Reply:
        return Reply.json(400, failed_envelope(self.message, code=self.code, field=self.field))


class FakeServiceDesk(FakeServer):
    """Behave like ServiceDesk Plus v3 as described in shared/servicedesk/API.md."""

    def __init__(
        self,
        auth: AuthType = "authtoken",
        api_key: str = "test-key",
        portal: str | None = None,
        *,
        note_key: NoteKey = "request_note",
        groups_path: Literal["support_groups", "groups"] = "support_groups",
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if auth not in ("authtoken", "zoho_oauth"):
            raise ValueError(f"unknown auth type {auth!r}")
        if note_key not in ("request_note", "note"):
            raise ValueError(f"unknown note key {note_key!r}")
        super().__init__(host=host, port=port, latency=latency)
        self.auth: AuthType = auth
        self.api_key = api_key
        self.portal = portal
        self.note_key: NoteKey = note_key
        self.requests: dict[str, dict[str, Any]] = {}
        self.notes: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        self.links: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        self.conversations: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        # Called (outside the lock) with (request id, event) after every stored note or request edit, the way an
        # SDP custom trigger on edit would call the webhook.
        self.on_change: Any = None
        # Called (outside the lock, on the server's thread) with the request id when a GET of one request has
        # arrived, before it is answered: what a test does there happens while the client waits for SDP's answer.
        self.on_get_request: Callable[[str], None] | None = None
        self.lists: dict[str, list[dict[str, Any]]] = {}
        self.updates: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        self.groups_path = groups_path
        self._list_ids = itertools.count(9001)
        self._ids = itertools.count(200001)
        self._note_ids = itertools.count(700001)

    # -- configuration the project sees ------------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        """Return the path prefix before /api/v3 (`/app/<portal>` for a cloud portal, else empty)."""
        return f"/app/{self.portal}" if self.portal else ""

    @property
    def url(self) -> str:
        """Return the base URL to store as a tenant's `sdp_base_url`."""
        return self.origin + self.prefix

    def auth_headers(self) -> dict[str, str]:
        """Return the headers a correct client sends, for tests that call the fake directly."""
        if self.auth == "zoho_oauth":
            credentials = {"Authorization": f"Zoho-oauthtoken {self.api_key}"}
        else:
            credentials = {"authtoken": self.api_key}
        return {"Accept": ACCEPT, **credentials}

    # -- state -------------------------------------------------------------------------------------------------

    def add_request(self, request: Mapping[str, Any]) -> str:
        """Store a v3 request object (or a `{"request": {...}}` answer) and return its id as a string."""
        data = dict(request)
        if "id" not in data and isinstance(data.get("request"), Mapping):
            data = dict(data["request"])
        data = copy.deepcopy(data)
        request_id = str(data.get("id") or next(self._ids))
        data["id"] = request_id
        with self._lock:
            self.requests[request_id] = data
        return request_id

    def add_note(self, request_id: str | int, description: str, **fields: Any) -> dict[str, Any]:
        """Store a note as if it had been added earlier (e.g. by a previous, timed-out attempt) and return it."""
        return self._store_note(str(request_id), {"description": description, **fields})

    def set_choices(
        self,
        *,
        categories: dict[str, list[str]] | None = None,
        priorities: list[str] | None = None,
        groups: dict[str, str] | list[str] | None = None,
        technicians: dict[str, list[str]] | list[str] | None = None,
    ) -> None:
        """Define the instance's lists: categories with their subcategories, priorities, groups, technicians.

        `groups` maps a name to a description (or lists names); `technicians` maps a group to its members.
        """
        with self._lock:
            if categories is not None:
                self.lists["categories"], self.lists["subcategories"] = [], []
                for name, subs in categories.items():
                    category = {"id": str(next(self._list_ids)), "name": name, "deleted": False}
                    self.lists["categories"].append(category)
                    for sub in subs:
                        self.lists["subcategories"].append(
                            {
                                "id": str(next(self._list_ids)),
                                "name": sub,
                                "deleted": False,
                                "category": {"id": category["id"], "name": name},
                            }
                        )
            if priorities is not None:
                self.lists["priorities"] = [
                    {"id": str(next(self._list_ids)), "name": name, "color": "#888888"} for name in priorities
                ]
            if groups is not None:
                described = groups if isinstance(groups, dict) else dict.fromkeys(groups, "")
                self.lists["support_groups"] = [
                    {"id": str(next(self._list_ids)), "name": name, "description": text, "deleted": False}
                    for name, text in described.items()
                ]
            if technicians is not None:
                members = technicians if isinstance(technicians, dict) else {"": technicians}
                rows: dict[str, dict[str, Any]] = {}
                for group, names in members.items():
                    for name in names:
                        row = rows.setdefault(
                            name,
                            {
                                "id": str(next(self._list_ids)),
                                "name": name,
                                "email_id": name.lower().replace(" ", ".") + "@msp.example",
                                "status": "ACTIVE",
                                "support_groups": [],
                            },
                        )
                        if group:
                            row["support_groups"].append({"name": group})
                self.lists["technicians"] = list(rows.values())

    def edit_request(self, request_id: str | int, **fields: Any) -> None:
        """Change fields of a stored request as a person in SDP's UI would (a name becomes `{"name": ...}`)."""
        with self._lock:
            stored = self.requests[str(request_id)]
            for key, value in fields.items():
                stored[key] = {"name": value} if isinstance(value, str) and key in LINKED_FIELDS else value
        self._changed(str(request_id), "edit")

    def fail_next(
        self,
        count: int = 1,
        status: int | str = 500,
        *,
        path_contains: str | None = None,
        method: str | None = None,
        retry_after: float | None = None,
        body: Any = None,
        delay: float = 10.0,
        process: bool = True,
    ) -> None:
        """Make the next `count` requests matching path and method fail as the module docstring lists."""
        allowed = {"timeout", "disconnect", "throttle_4015", "throttle_4015_200"}
        if isinstance(status, str) and status not in allowed:
            raise ValueError(f"unknown failure {status!r}; use an HTTP status or one of {sorted(allowed)}")
        self._queue_failure(
            Failure(
                remaining=count,
                status=status,
                path_contains=path_contains,
                method=method,
                retry_after=retry_after,
                body=body,
                delay=delay if status == "timeout" else 0.0,
                process=process,
            )
        )

    def reset(self) -> None:
        """Forget requests, notes, the log and pending failures; keep auth, api key, portal and note key."""
        with self._lock:
            super().reset()
            self.requests.clear()
            self.notes.clear()
            self.links.clear()
            self.conversations.clear()
            self.lists.clear()
            self.updates.clear()

    # -- HTTP --------------------------------------------------------------------------------------------------

    def failure_reply(self, failure: Failure, request: RecordedRequest) -> Reply:
        """Return the answer for an injected failure."""
        headers = failure.retry_after_header()
        if failure.body is not None:
            return Reply.raw(int(failure.status) if isinstance(failure.status, int) else 400, failure.body, headers)
        if failure.status in ("throttle_4015", "throttle_4015_200"):
            status = 200 if failure.status == "throttle_4015_200" else 400
            return Reply.json(status, failed_envelope(THROTTLE_MESSAGE, code=4015), headers)
        assert isinstance(failure.status, int)
        if failure.status == 401:
            return Reply.json(401, servicedesk_fixture("api__error_auth"), headers)
        if failure.status == 429:
            return Reply.json(429, failed_envelope("Too many requests", code=4015), headers)
        message = f"Injected failure (HTTP {failure.status})"
        return Reply.json(failure.status, failed_envelope(message), headers)

    def handle(self, request: RecordedRequest) -> Reply:
        """Return SDP's answer to a request."""
        if not request.path.startswith(self.prefix + "/api/v3/"):
            return Reply.json(404, failed_envelope("Invalid URL", code=4007))
        if not self._authorised(request.headers):
            return Reply.json(401, servicedesk_fixture("api__error_auth"))
        if ACCEPT not in request.headers.get("accept", ""):
            return Reply.json(400, failed_envelope(f"Accept header must be {ACCEPT}", code=4000, field="Accept"))
        path = request.path.removeprefix(self.prefix)
        try:
            if _REQUESTS.match(path):
                return self._only(request, "GET") or self._list_requests(request)
            if match := _LINKS.match(path):
                if request.method == "POST":
                    return self._link_requests(match["id"], request)
                return self._only(request, "GET") or self._list_links(match["id"])
            if match := _CONVERSATIONS.match(path):
                return self._only(request, "GET") or self._list_conversations(match["id"], request)
            if match := _LIST.match(path):
                return self._only(request, "GET") or self._list_choices(match["kind"], request)
            if match := _NOTES.match(path):
                if request.method == "POST":
                    return self._add_note(match["id"], request)
                return self._only(request, "GET") or self._list_notes(match["id"], request)
            if match := _REQUEST.match(path):
                if request.method == "PUT":
                    return self._update_request(match["id"], request)
                return self._only(request, "GET") or self._get_request(match["id"])
        except _BadInputError as error:
            return error.reply()
        return Reply.json(404, failed_envelope("Invalid URL", code=4007))

    def _authorised(self, headers: Mapping[str, str]) -> bool:
        if self.auth == "zoho_oauth":
            return headers.get("authorization") == f"Zoho-oauthtoken {self.api_key}"
        return headers.get("authtoken") == self.api_key

    @staticmethod
    def _only(request: RecordedRequest, method: str) -> Reply | None:
        if request.method == method:
            return None
        return Reply.json(405, failed_envelope(f"Method {request.method} is not allowed here", code=4000))

    def _find(self, request_id: str) -> dict[str, Any] | None:
        with self._lock:
            found = self.requests.get(request_id)
            return copy.deepcopy(found) if found is not None else None

    @staticmethod
    def _not_found(request_id: str) -> Reply:
        return Reply.json(404, failed_envelope(f"Request {request_id} not found", code=4007, field="id"))

    def _get_request(self, request_id: str) -> Reply:
        if self.on_get_request is not None:
            self.on_get_request(request_id)
        found = self._find(request_id)
        if found is None:
            return self._not_found(request_id)
        return Reply.json(200, {"request": found, "response_status": SUCCESS})

    def _form_input(self, request: RecordedRequest) -> dict[str, Any]:
        # SDP reads input only from the form field; a JSON body arrives as "no input" on a real server.
        if request.content_type != FORM_TYPE:
            raise _BadInputError(f"Content-Type must be {FORM_TYPE} with an input_data field", field="input_data")
        raw = request.form.get("input_data")
        if raw is None:
            raise _BadInputError("input_data is missing", field="input_data", code=4012)
        return self._parse_input(raw)

    @staticmethod
    def _parse_input(raw: str) -> dict[str, Any]:
        try:
            data = json.loads(raw)
        except ValueError as error:
            raise _BadInputError(f"input_data is not valid JSON: {error}", field="input_data") from None
        if not isinstance(data, dict):
            raise _BadInputError("input_data must be a JSON object", field="input_data")
        return data

    def _query_list_info(self, request: RecordedRequest) -> dict[str, Any]:
        raw = request.query.get("input_data")
        if raw is None:
            return {}
        list_info = self._parse_input(raw).get("list_info", {})
        if not isinstance(list_info, dict):
            raise _BadInputError("list_info must be an object", field="list_info")
        return list_info

    @staticmethod
    def _page(list_info: Mapping[str, Any]) -> tuple[int, int]:
        try:
            row_count = int(list_info.get("row_count", DEFAULT_ROW_COUNT))
            start_index = int(list_info.get("start_index", 1))
        except (TypeError, ValueError):
            raise _BadInputError("row_count and start_index must be integers", field="list_info") from None
        if not 1 <= row_count <= MAX_ROW_COUNT:
            raise _BadInputError(f"row_count must be between 1 and {MAX_ROW_COUNT}", field="row_count", code=4001)
        if start_index < 1:
            raise _BadInputError("start_index starts at 1", field="start_index", code=4001)
        return start_index, row_count

    def _list_requests(self, request: RecordedRequest) -> Reply:
        list_info = self._query_list_info(request)
        with self._lock:
            rows = [copy.deepcopy(item) for item in self.requests.values()]
        criteria = list_info.get("search_criteria")
        if criteria:
            rows = [row for row in rows if _matches_all(row, criteria)]
        sort_field = list_info.get("sort_field")
        sort_order = str(list_info.get("sort_order", "asc")).lower()
        if sort_order not in ("asc", "desc"):
            raise _BadInputError("sort_order must be asc or desc", field="sort_order", code=4001)
        if sort_field:
            rows = _sorted(rows, str(sort_field), descending=sort_order == "desc")
        start_index, row_count = self._page(list_info)
        page = rows[start_index - 1 : start_index - 1 + row_count]
        for row in page:
            for key in LIST_OMITS:
                row.pop(key, None)
        info: dict[str, Any] = {
            "has_more_rows": start_index - 1 + row_count < len(rows),
            "start_index": start_index,
            "row_count": len(page),
        }
        if sort_field:
            info |= {"sort_field": sort_field, "sort_order": sort_order}
        if list_info.get("get_total_count") in (True, "true"):
            info["total_count"] = len(rows)
        return Reply.json(200, {"requests": page, "list_info": info, "response_status": [SUCCESS]})

    def _list_choices(self, kind: str, request: RecordedRequest) -> Reply:
        if kind in ("support_groups", "groups"):
            if kind != self.groups_path:
                return Reply.json(404, failed_envelope("Invalid URL", code=4007))
            kind = "support_groups"
        list_info = self._query_list_info(request)
        with self._lock:
            rows = [copy.deepcopy(row) for row in self.lists.get(kind, [])]
        criteria = list_info.get("search_criteria")
        if criteria:
            rows = [row for row in rows if _matches_all(row, criteria)]
        start_index, row_count = self._page(list_info)
        page = rows[start_index - 1 : start_index - 1 + row_count]
        info: dict[str, Any] = {
            "has_more_rows": start_index - 1 + row_count < len(rows),
            "start_index": start_index,
            "row_count": len(page),
        }
        key = self.groups_path if kind == "support_groups" else kind
        return Reply.json(200, {key: page, "list_info": info, "response_status": [SUCCESS]})

    def _resolve_linked(self, key: str, value: Any, category: Any) -> dict[str, Any]:
        """Return the list record a PUT value names, or raise SDP's invalid-value error."""
        rows = self.lists.get(LINKED_FIELDS[key])
        if value is None or rows is None:
            return value
        if not isinstance(value, dict) or not (value.get("id") or value.get("name")):
            raise _BadInputError(f"Invalid value for {key}", field=key, code=INVALID_VALUE)
        for row in rows:
            if (value.get("id") and str(value["id"]) == row["id"]) or (
                not value.get("id") and str(value.get("name", "")).lower() == row["name"].lower()
            ):
                if key == "subcategory":
                    parent = _name_of(category)
                    if parent and row["category"]["name"].lower() != parent.lower():
                        raise _BadInputError(
                            f"Subcategory {row['name']} does not belong to category {parent}",
                            field=key,
                            code=INVALID_VALUE,
                        )
                return {"id": row["id"], "name": row["name"]}
        raise _BadInputError(f"Invalid value for {key}: {value}", field=key, code=INVALID_VALUE)

    def _update_request(self, request_id: str, request: RecordedRequest) -> Reply:
        changes = self._form_input(request).get("request")
        if not isinstance(changes, dict):
            raise _BadInputError("Mandatory field request missing", field="request", code=4012)
        changes = dict(changes)
        reason = changes.pop("update_reason", None)
        if reason is not None and not isinstance(reason, str):
            raise _BadInputError("update_reason must be a string", field="update_reason", code=INVALID_VALUE)
        with self._lock:
            stored = self.requests.get(request_id)
            if stored is None:
                return self._not_found(request_id)
            category = changes.get("category", stored.get("category"))
            resolved = {
                key: self._resolve_linked(key, value, category) if key in LINKED_FIELDS else value
                for key, value in changes.items()
            }
            for key, value in resolved.items():
                if key == "udf_fields" and isinstance(value, dict):
                    stored.setdefault("udf_fields", {}).update(value)
                else:
                    stored[key] = value
            self.updates[request_id].append({"changes": copy.deepcopy(resolved), "update_reason": reason})
            answer = copy.deepcopy(stored)
        self._changed(request_id, "edit")
        return Reply.json(200, {"request": answer, "response_status": SUCCESS})

    def _add_note(self, request_id: str, request: RecordedRequest) -> Reply:
        if self._find(request_id) is None:
            return self._not_found(request_id)
        data = self._form_input(request)
        other_key = "note" if self.note_key == "request_note" else "request_note"
        if other_key in data:
            # Builds reject any key they do not know (see api__error_extra_key.json), naming it in `field`.
            envelope = servicedesk_fixture("api__error_extra_key")
            envelope["response_status"]["messages"][0]["field"] = other_key
            return Reply.json(400, envelope)
        note = data.get(self.note_key)
        if not isinstance(note, dict):
            raise _BadInputError(f"Mandatory field {self.note_key} missing", field=self.note_key, code=4012)
        if not str(note.get("description") or "").strip():
            raise _BadInputError("Value for description is mandatory", field="description", code=4012)
        stored = self._store_note(request_id, note)
        answer = {
            "id": stored["id"],
            "description": stored["description"],
            "show_to_requester": bool(stored.get("show_to_requester", False)),
            "added_time": stored["added_time"],
            "added_by": stored["added_by"],
        }
        return Reply.json(200, {self.note_key: answer, "response_status": SUCCESS})

    def _store_note(self, request_id: str, note: Mapping[str, Any]) -> dict[str, Any]:
        received = {key: value for key, value in copy.deepcopy(dict(note)).items() if key != "id"}
        stored = {
            "id": str(next(self._note_ids)),
            **received,
            "added_time": sdp_time(),
            "added_by": {"id": "5", "name": "Enhancement Bot"},
        }
        with self._lock:
            self.notes[request_id].append(stored)
        self._changed(request_id, "note")
        return copy.deepcopy(stored)

    def _list_notes(self, request_id: str, request: RecordedRequest) -> Reply:
        list_info = self._query_list_info(request)
        if self._find(request_id) is None:
            return self._not_found(request_id)
        with self._lock:
            notes = copy.deepcopy(self.notes.get(request_id, []))
        start_index, row_count = self._page(list_info)
        page = notes[start_index - 1 : start_index - 1 + row_count]
        info = {
            "has_more_rows": start_index - 1 + row_count < len(notes),
            "start_index": start_index,
            "row_count": len(page),
        }
        if list_info.get("get_total_count") in (True, "true"):
            info["total_count"] = len(notes)
        return Reply.json(200, {"request_notes": page, "list_info": info, "response_status": [SUCCESS]})

    # -- linked requests and conversations ----------------------------------------------------------------------

    def _link_requests(self, request_id: str, request: RecordedRequest) -> Reply:
        if self._find(request_id) is None:
            return self._not_found(request_id)
        links = self._form_input(request).get("link_requests")
        if not isinstance(links, list) or not links:
            raise _BadInputError("Mandatory field link_requests missing", field="link_requests", code=4012)
        added = []
        with self._lock:
            for item in links:
                other = str(((item or {}).get("linked_request") or {}).get("id") or "")
                if other not in self.requests:
                    raise _BadInputError(f"Request {other or '?'} not found", field="linked_request", code=4007)
                if other == request_id:
                    raise _BadInputError("A request cannot be linked to itself", field="linked_request", code=4001)
                known = {link["linked_request"]["id"] for link in self.links[request_id]}
                if other not in known:
                    link = {"linked_request": {"id": other}, "comments": str(item.get("comments") or "")}
                    self.links[request_id].append(link)
                    added.append(copy.deepcopy(link))
        return Reply.json(200, {"link_requests": added, "response_status": SUCCESS})

    def _list_links(self, request_id: str) -> Reply:
        if self._find(request_id) is None:
            return self._not_found(request_id)
        with self._lock:
            links = copy.deepcopy(self.links.get(request_id, []))
        return Reply.json(200, {"link_requests": links, "response_status": [SUCCESS]})

    def add_conversation(
        self, request_id: str | int, description: str, *, sender: str = "requester@example.com", name: str = "Requester"
    ) -> dict[str, Any]:
        """Store a requester reply in the request's conversations (as an e-mail reply to the request would)."""
        item = {
            "id": str(next(self._note_ids)),
            "type": "reply",
            "from": {"name": name, "email_id": sender},
            "description": description,
            "sent_time": sdp_time(),
        }
        with self._lock:
            self.conversations[str(request_id)].append(item)
        self._changed(str(request_id), "reply")
        return copy.deepcopy(item)

    def _list_conversations(self, request_id: str, request: RecordedRequest) -> Reply:
        list_info = self._query_list_info(request)
        if self._find(request_id) is None:
            return self._not_found(request_id)
        with self._lock:
            rows = copy.deepcopy(self.conversations.get(request_id, []))
        start_index, row_count = self._page(list_info)
        page = rows[start_index - 1 : start_index - 1 + row_count]
        info = {
            "has_more_rows": start_index - 1 + row_count < len(rows),
            "start_index": start_index,
            "row_count": len(page),
        }
        return Reply.json(200, {"conversations": page, "list_info": info, "response_status": [SUCCESS]})

    def _changed(self, request_id: str, event: str) -> None:
        callback = self.on_change
        if callback is not None:
            callback(request_id, event)


# -- search criteria -------------------------------------------------------------------------------------------


def _name_of(value: Any) -> str:
    return str(value.get("name") or "") if isinstance(value, Mapping) else ""


def _field_value(row: Mapping[str, Any], dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    # Time fields are {"value": "<ms>", "display_value": ...}; criteria compare the value.
    if isinstance(value, Mapping) and "value" in value:
        value = value["value"]
    return value


def _as_int(value: Any, field: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _BadInputError(f"{value!r} is not epoch milliseconds", field=field, code=4001) from None


def _matches(row: Mapping[str, Any], criterion: Mapping[str, Any]) -> bool:
    field = criterion.get("field")
    condition = str(criterion.get("condition", "")).lower()
    values = criterion.get("values")
    if values is None:
        values = [criterion.get("value")]
    if not isinstance(field, str) or not isinstance(values, list):
        raise _BadInputError("search_criteria needs field, condition and values", field="search_criteria")
    actual = _field_value(row, field)
    if condition in ("is", "is not"):
        found = actual is not None and str(actual).lower() in {str(value).lower() for value in values}
        return found if condition == "is" else not found
    if condition == "contains":
        return actual is not None and any(str(value).lower() in str(actual).lower() for value in values)
    if condition == "between":
        if len(values) != 2:
            raise _BadInputError("between needs two values", field=field, code=4001)
        low, high = (_as_int(value, field) for value in values)
        return actual is not None and low <= _as_int(actual, field) <= high
    if condition in ("greater than", "less than"):
        if actual is None:
            return False
        bound = _as_int(values[0], field)
        return _as_int(actual, field) > bound if condition == "greater than" else _as_int(actual, field) < bound
    raise _BadInputError(f"condition {condition!r} is not supported by the fake", field="search_criteria", code=4001)


def _matches_all(row: Mapping[str, Any], criteria: Any) -> bool:
    items = [criteria] if isinstance(criteria, Mapping) else criteria
    if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
        raise _BadInputError("search_criteria must be an object or a list of objects", field="search_criteria")
    result = _matches(row, items[0])
    for item in items[1:]:
        if str(item.get("logical_operator", "AND")).upper() == "OR":
            result = result or _matches(row, item)
        else:
            result = result and _matches(row, item)
    return result


def _sorted(rows: list[dict[str, Any]], field: str, *, descending: bool) -> list[dict[str, Any]]:
    def key(row: dict[str, Any]) -> tuple[int, str]:
        value = _field_value(row, field)
        text = "" if value is None else str(value)
        # Epoch-ms strings and numeric ids must compare as numbers, not text.
        return (len(text), text) if text.isdigit() else (0, text.lower())

    present = [row for row in rows if _field_value(row, field) is not None]
    missing = [row for row in rows if _field_value(row, field) is None]
    return sorted(present, key=key, reverse=descending) + missing


# -- CLI ---------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Run a FakeServiceDesk in the foreground and print its base URL."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.sdp", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--auth", choices=["authtoken", "zoho_oauth"], default="authtoken")
    parser.add_argument("--api-key", default="test-key")
    parser.add_argument("--portal", default=None, help="cloud portal name: serve under /app/<portal>")
    parser.add_argument("--note-key", choices=["request_note", "note"], default="request_note")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds to wait before each answer")
    parser.add_argument(
        "--seed", action="append", default=[], type=Path, help="JSON file with a request object (repeatable)"
    )
    args = parser.parse_args(argv)
    fake = FakeServiceDesk(
        args.auth,
        args.api_key,
        args.portal,
        note_key=args.note_key,
        latency=args.latency,
        host=args.host,
        port=args.port,
    )
    for seed in args.seed:
        data = json.loads(seed.read_text(encoding="utf-8"))
        items = data.get("requests", [data]) if isinstance(data, dict) else data
        for item in items:
            fake.add_request(item)

    def announce() -> None:
        print(fake.url, flush=True)
        print(
            f"FakeServiceDesk auth={fake.auth} api_key={fake.api_key} requests={sorted(fake.requests)}; Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )

    fake.run_forever(announce)


if __name__ == "__main__":
    main()
