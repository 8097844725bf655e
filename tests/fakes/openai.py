"""A fake OpenAI-compatible API (Chat Completions and Embeddings) served over real HTTP on loopback.

Usage in a test::

    with FakeOpenAI() as llm:
        client = openai.OpenAI(base_url=llm.url, api_key=llm.api_key, max_retries=0)
        ...
        assert llm.requests_log[-1].json["model"] == "gpt-4o-mini"

By default the answer's message content is JSON built from the `json_schema` the caller sent: every property
filled, strings mention the ticket subject found in the user message, arrays of strings get two items, enums
their first value, and arrays named like `related_tickets` get ids found in a context block of the prompt.

`POST /v1/embeddings` answers deterministic unit vectors (hashed words: texts sharing words are near), of the
model's documented size (1536 for text-embedding-3-small, `dimensions` honoured on text-embedding-3 models, 768
for other names such as nomic-embed-text), as floats or base64 as asked, and rejects empty input like OpenAI.

Injected failures (`fail_next(status=...)`): an HTTP status as an int (401, 429, 500, ... with OpenAI's error
body; `Retry-After` when `retry_after` is given); "timeout" (answer normally after `delay` seconds);
"invalid_json" (content that is not JSON); "schema_violation" (JSON without the required fields); "refusal"
(OpenAI's structured-output refusal: content null, message.refusal set); "length" (the answer cut off at the token
limit, finish_reason "length");
"disconnect" (close the connection without an answer).

Server kinds (`FakeOpenAI(kind=...)` or `set_kind(...)`, `--kind` on the command line): how other
OpenAI-compatible servers treat `response_format`, with the error bodies they send (see
enhancements/llm_structured.py for the sources):
- "openai": json_schema (strict) and json_object honoured; a schema given in the prompt (`<json_schema>` tags)
  is followed when there is no response_format.
- "ollama-old" (Ollama before 0.5): json_schema accepted and ignored: prose with a fenced JSON block that
  follows only a schema written in the prompt; json_object honoured (format=json); no response_format: prose
  with a fenced block.
- "ignores-format": every response_format accepted and ignored; prose with a fenced block.
- "vllm": strict json_schema refused with vLLM's 400 ("The provided JSON schema contains features not
  supported by xgrammar."); json_object honoured; no response_format: plain JSON.
- "lmstudio": json_schema honoured; json_object refused with LM Studio's 400 (`{"error": "'response_format.type'
  must be 'json_schema' or 'text'"}`); no response_format: JSON in a Markdown fence.
- "old-gateway": any response_format refused with a 400 ("Unrecognized request argument supplied:
  response_format", Azure's wording before 2024-08-01-preview); no response_format: JSON amid prose.
- "newlines": json_schema honoured, but strings hold raw newlines and tabs (invalid strict JSON).
- "nan": json_schema honoured, but every number is `NaN` and sentences end with `\u0000`.
- "no-json": supports no mode: every response_format accepted and ignored, and never any JSON, only prose (a chat
  model behind a gateway that drops response_format and does not follow a schema in the prompt).
`chat_requests(mode=...)` counts the completions received, per output mode sent.

Rate limits (`rate_limit(requests_per_minute=..., tokens_per_minute=...)`): like OpenAI, the limits are per key and
every answer carries `x-ratelimit-limit-*`, `x-ratelimit-remaining-*` and `x-ratelimit-reset-*` for requests and
tokens; a completion that does not fit answers 429 `rate_limit_exceeded` with `Retry-After`. A minute's limit is
enforced over shorter windows (OpenAI: "your rate limit may be quantized"): each limit is a bucket holding
`window` seconds' worth that refills continuously; a completion costs one request and its prompt plus completion
tokens. `rate_limited` counts the 429s sent for it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import math
import re
import struct
import sys
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tests.fakes._http import Failure, FakeServer, RecordedRequest, Reply

KINDS = ("openai", "ollama-old", "ignores-format", "vllm", "lmstudio", "old-gateway", "newlines", "nan", "no-json")
_PROMPT_SCHEMA = re.compile(r"<json_schema>\s*(?P<schema>\{.*?\})\s*</json_schema>", re.DOTALL)
_STRING_FAILURES = {"timeout", "disconnect", "invalid_json", "schema_violation", "refusal", "length"}
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}
# Tags and headings under which a prompt typically lists similar tickets; their ids may be cited.
_CONTEXT_TAG = re.compile(
    r"<(?P<tag>[\w-]*(?:context|similar|related|history|tickets)[\w-]*)\b[^>]*>(?P<body>.*?)</(?P=tag)\s*>",
    re.IGNORECASE | re.DOTALL,
)
_CONTEXT_HEADING = re.compile(
    r"^[#=*\s-]*(?:similar|related|context|past|resolved|history)\b[^\n]*$", re.IGNORECASE | re.MULTILINE
)
_TICKET_ID = re.compile(
    r"(?:#|\b(?:\w+_)?id\b[\"']?\s*[:=]\s*[\"']?|\b(?:ticket|request)\s+(?:id\s*)?[#:]?\s*)(?P<id>\d{2,})",
    re.IGNORECASE,
)
_SUBJECT = re.compile(r"^\W*(?:subject|title)\W*[:=]\s*[\"']?(?P<subject>[^\n\"']+)", re.IGNORECASE | re.MULTILINE)
_JSON_SUBJECT = re.compile(r"\"subject\"\s*:\s*\"(?P<subject>[^\"]+)\"")


class FakeOpenAI(FakeServer):
    """Answer `POST /v1/chat/completions` like OpenAI does, with content that fits the requested schema."""

    def __init__(
        self,
        api_key: str = "test-openai-key",
        *,
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        kind: str = "openai",
    ) -> None:
        super().__init__(host=host, port=port, latency=latency)
        self.api_key = api_key
        self.set_kind(kind)
        self.forced_content: str | None = None
        self._ids = itertools.count(1)
        self._buckets: dict[str, _Bucket] = {}
        self.rate_limited = 0

    @property
    def url(self) -> str:
        """Return the base URL to give the `openai` client (`http://127.0.0.1:PORT/v1`)."""
        return f"{self.origin}/v1"

    def set_kind(self, kind: str) -> None:
        """Behave like this kind of server from now on (see the module docstring)."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; use one of {KINDS}")
        self.kind = kind

    def chat_requests(self, mode: str | None = None) -> int:
        """Return how many completions were received (with `mode`: only those sent in that output mode)."""
        with self._lock:
            log = [r for r in self.requests_log if r.path.rstrip("/").endswith("/chat/completions")]
        return sum(1 for r in log if mode is None or _mode_of(r.json) == mode)

    def set_response(self, content: str | Mapping[str, Any] | None) -> None:
        """Answer every following completion with this content (a mapping is sent as JSON); None restores default."""
        self.forced_content = json.dumps(content) if isinstance(content, Mapping) else content

    def fail_next(
        self,
        count: int = 1,
        status: int | str = 500,
        *,
        path_contains: str | None = None,
        retry_after: float | None = None,
        body: Any = None,
        delay: float = 10.0,
    ) -> None:
        """Make the next `count` matching requests fail as the module docstring lists."""
        if isinstance(status, str) and status not in _STRING_FAILURES:
            raise ValueError(f"unknown failure {status!r}; use an HTTP status or one of {sorted(_STRING_FAILURES)}")
        self._queue_failure(
            Failure(
                remaining=count,
                status=status,
                path_contains=path_contains,
                retry_after=retry_after,
                body=body,
                delay=delay if status == "timeout" else 0.0,
            )
        )

    def reset(self) -> None:
        """Forget the log, pending failures, a forced response and rate limits."""
        with self._lock:
            super().reset()
            self.forced_content = None
            self._buckets.clear()
            self.rate_limited = 0

    def rate_limit(
        self, *, requests_per_minute: int | None = None, tokens_per_minute: int | None = None, window: float = 1.0
    ) -> None:
        """Enforce per-minute limits on completions, each over buckets of `window` seconds (see the docstring)."""
        with self._lock:
            self._buckets = {
                kind: _Bucket(per_minute=limit, window=window)
                for kind, limit in (("requests", requests_per_minute), ("tokens", tokens_per_minute))
                if limit
            }

    # -- HTTP --------------------------------------------------------------------------------------------------

    def failure_reply(self, failure: Failure, request: RecordedRequest) -> Reply:
        """Return the answer for an injected failure."""
        headers = failure.retry_after_header()
        if failure.status in ("refusal", "length"):
            rejected = self._check(request)
            if rejected is not None:
                return rejected
            example = json.dumps(self._example(request.json))
            completion = self._completion(request.json, example[: len(example) // 2])
            choice = completion["choices"][0]
            if failure.status == "refusal":
                choice["message"].update(content=None, refusal="I'm sorry, I can't assist with that request.")
            else:
                choice["finish_reason"] = "length"
            return Reply.json(200, completion, headers)
        if failure.status in ("invalid_json", "schema_violation"):
            rejected = self._check(request)
            if rejected is not None:
                return rejected
            if failure.status == "invalid_json":
                content = "Sure! Here is what I think about this ticket: it is probably a network issue."
            else:
                content = json.dumps(_without_required(_schema_of(request.json), self._example(request.json)))
            return Reply.json(200, self._completion(request.json, content), headers)
        assert isinstance(failure.status, int)
        if failure.body is not None:
            return Reply.raw(failure.status, failure.body, headers)
        return _error(failure.status, headers=headers)

    def handle(self, request: RecordedRequest) -> Reply:
        """Return OpenAI's answer to a request."""
        path = request.path.rstrip("/")
        if path == "/v1/models" and request.method == "GET":
            if not self._authorised(request):
                return _error(401)
            model = {"id": "fake-model", "object": "model", "created": 0, "owned_by": "tests"}
            return Reply.json(200, {"object": "list", "data": [model]})
        if path == "/v1/embeddings" and request.method == "POST":
            return self._embeddings(request)
        if path != "/v1/chat/completions" or request.method != "POST":
            return _error(404, f"Unknown request URL: {request.method} {request.path}.", code="unknown_url")
        rejected = self._check(request)
        if rejected is not None:
            return rejected
        body = request.json
        refused = self._refusal(body)
        if refused is not None:
            return refused
        content = self.forced_content
        if content is None:
            content = self._content(body)
        completion = self._completion(body, content)
        headers = {"x-request-id": f"req_{uuid.uuid4().hex}"}
        if self._buckets:
            wait, limits = self._spend({"requests": 1, "tokens": completion["usage"]["total_tokens"]})
            headers.update(limits)
            if wait > 0:
                return _error(
                    429,
                    f"Rate limit reached for fake-model on requests and tokens per minute. Please try again in "
                    f"{wait:.3f}s.",
                    headers={**headers, "Retry-After": f"{wait:.3f}"},
                )
        return Reply.json(200, completion, headers)

    def _spend(self, costs: dict[str, int]) -> tuple[float, dict[str, str]]:
        """Take the costs from every bucket, or none of them; return the wait before they fit and the headers."""
        now = time.monotonic()
        with self._lock:
            buckets = self._buckets
            waits = {kind: bucket.wait(now, costs[kind]) for kind, bucket in buckets.items()}
            wait = max(waits.values())
            if wait > 0:
                self.rate_limited += 1
            else:
                for kind, bucket in buckets.items():
                    bucket.take(costs[kind])
            headers: dict[str, str] = {}
            for kind, bucket in buckets.items():
                headers[f"x-ratelimit-limit-{kind}"] = str(bucket.per_minute)
                headers[f"x-ratelimit-remaining-{kind}"] = str(int(bucket.level))
                headers[f"x-ratelimit-reset-{kind}"] = f"{bucket.seconds_to_full():.3f}s"
        return wait, headers

    def _embeddings(self, request: RecordedRequest) -> Reply:
        """Answer `POST /v1/embeddings` as OpenAI documents it (float or base64 vectors, usage, input checks)."""
        if not self._authorised(request):
            return _error(401)
        body = request.json
        if not isinstance(body, dict):
            return _error(400, "We could not parse the JSON body of your request.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _error(400, "you must provide a model parameter", param="model")
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if (
            not isinstance(texts, list)
            or not texts
            or len(texts) > 2048
            or not all(isinstance(t, str) and t for t in texts)
        ):
            return _error(400, "'$.input' is invalid. Please check the API reference.", param="input")
        dimensions = body.get("dimensions")
        size = _EMBEDDING_SIZES.get(model, 768)
        if dimensions is not None:
            if (
                not model.startswith("text-embedding-3")
                or not isinstance(dimensions, int)
                or not 1 <= dimensions <= size
            ):
                return _error(
                    400, f"This model does not support specifying dimensions={dimensions!r}.", param="dimensions"
                )
            size = dimensions
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            return _error(400, "encoding_format must be float or base64", param="encoding_format")
        data = []
        for index, text in enumerate(texts):
            vector = fake_embedding(text, size)
            value: Any = vector
            if encoding == "base64":
                value = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": value})
        tokens = sum(max(1, len(t) // 4) for t in texts)
        return Reply.json(
            200,
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    def _authorised(self, request: RecordedRequest) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.api_key}"

    def _check(self, request: RecordedRequest) -> Reply | None:
        if not self._authorised(request):
            return _error(401)
        body = request.json
        if not isinstance(body, dict):
            return _error(400, "We could not parse the JSON body of your request.")
        if not isinstance(body.get("model"), str) or not body["model"]:
            return _error(400, "you must provide a model parameter", param="model")
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return _error(400, "'messages' must be a non-empty array", param="messages")
        if body.get("stream"):
            return _error(400, "The fake does not stream; call without stream=True.", param="stream")
        return None

    def _refusal(self, body: Mapping[str, Any]) -> Reply | None:
        """Return the 400 this kind of server sends for the output mode asked for, if it refuses it."""
        mode = _mode_of(body)
        if self.kind == "vllm" and mode == "json_schema":
            # vLLM answers its own error shape, not OpenAI's.
            message = "The provided JSON schema contains features not supported by xgrammar."
            payload = {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": 400}
            return Reply.json(400, payload)
        if self.kind == "lmstudio" and mode == "json_object":
            return Reply.json(400, {"error": "'response_format.type' must be 'json_schema' or 'text'"})
        if self.kind == "old-gateway" and mode != "prompt":
            return _error(400, "Unrecognized request argument supplied: response_format", param="response_format")
        return None

    def _content(self, body: Mapping[str, Any]) -> str:
        """Return the message content this kind of server writes for the request."""
        mode, kind = _mode_of(body), self.kind
        if kind == "no-json":
            return f"I had a look at {_find_subject(body.get('messages', []))}: it sounds like a network issue."
        ignored = (kind == "ollama-old" and mode == "json_schema") or kind == "ignores-format"
        example = self._example(body, use_response_format=not ignored)
        if ignored or (mode == "prompt" and kind in ("ollama-old", "ignores-format")):
            return (
                f"Here is my analysis of the ticket.\n\n```json\n{json.dumps(example, indent=2)}\n```\n\nHope it helps!"
            )
        if mode == "prompt" and kind == "lmstudio":
            return f"```json\n{json.dumps(example, indent=2)}\n```"
        if mode == "prompt" and kind == "old-gateway":
            return f"Sure! Here is the JSON you asked for: {json.dumps(example)} Let me know if you need more."
        if kind == "newlines":
            return json.dumps(_with_raw_newlines(example), ensure_ascii=False).replace("\\n", "\n").replace("\\t", "\t")
        if kind == "nan":
            return json.dumps(_with_nan(example))
        return json.dumps(example)

    def _example(self, body: Mapping[str, Any], *, use_response_format: bool = True) -> Any:
        messages = body.get("messages", [])
        schema = (_schema_of(body) if use_response_format else None) or _prompt_schema(messages)
        builder = _ExampleBuilder(
            subject=_find_subject(messages), context_ids=_find_context_ids(messages), root=schema or {}
        )
        if schema is not None:
            return builder.build(schema, name="")
        response_format = body.get("response_format") or {}
        if response_format.get("type") == "json_object":
            return {"summary": builder.sentence("summary")}
        return builder.sentence("answer")

    def _completion(self, body: Mapping[str, Any], content: str) -> dict[str, Any]:
        prompt = " ".join(_texts(body.get("messages", [])))
        # Roughly four characters per token, the rule of thumb OpenAI documents for English text.
        prompt_tokens = max(1, len(prompt) // 4)
        completion_tokens = max(1, len(content) // 4)
        return {
            "id": f"chatcmpl-fake{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake-model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }


_EMBEDDING_SIZES = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
_EMBEDDING_WORD = re.compile(r"[^\W_]+")


def fake_embedding(text: str, size: int) -> list[float]:
    """Return a deterministic unit vector for text: hashed words (and their 4-letter prefixes), so texts sharing
    words are near each other as with a real model; the same text always gives the same vector."""
    vector = [0.0] * size
    for word in _EMBEDDING_WORD.findall(text.lower()):
        for feature in (word, word[:4]):
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            slot = int.from_bytes(digest[:4], "little") % size
            vector[slot] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    if not any(vector):
        vector[0], norm = 1.0, 1.0
    return [v / norm for v in vector]


class _Bucket:
    """A token bucket holding `window` seconds of a per-minute limit, refilled continuously."""

    def __init__(self, *, per_minute: int, window: float) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * window)
        self.level = self.capacity
        self.at = time.monotonic()

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now

    def wait(self, now: float, cost: int) -> float:
        """Return 0 if `cost` fits now (a full bucket admits any one request), else the seconds until it does."""
        self._refill(now)
        if cost <= self.level or self.level >= self.capacity:
            return 0.0
        return (min(cost, self.capacity) - self.level) / self.rate

    def take(self, cost: int) -> None:
        """Spend `cost` (the level may go below zero for a request larger than the bucket)."""
        self.level -= cost

    def seconds_to_full(self) -> float:
        """Return the seconds until the bucket is full again."""
        return max(0.0, (self.capacity - self.level) / self.rate)


def _error(
    status: int,
    message: str | None = None,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    kind, default_code, default_message = _ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, f"Injected HTTP {status}.")
    )
    error = {"message": message or default_message, "type": kind, "param": param, "code": code or default_code}
    return Reply.json(status, {"error": error}, headers)


def _schema_of(body: Any) -> dict[str, Any] | None:
    if not isinstance(body, Mapping):
        return None
    response_format = body.get("response_format") or {}
    if response_format.get("type") != "json_schema":
        return None
    schema = (response_format.get("json_schema") or {}).get("schema")
    return schema if isinstance(schema, dict) else None


def _mode_of(body: Any) -> str:
    """Return the output mode a request asked for: json_schema, json_object, text or prompt (none)."""
    response_format = body.get("response_format") if isinstance(body, Mapping) else None
    if not isinstance(response_format, Mapping):
        return "prompt"
    return str(response_format.get("type") or "prompt")


def _prompt_schema(messages: Any) -> dict[str, Any] | None:
    """Return a JSON schema written in the prompt between <json_schema> tags, as a model would read it."""
    for text in _texts(messages):
        match = _PROMPT_SCHEMA.search(text)
        if match:
            try:
                schema = json.loads(match["schema"])
            except ValueError:
                continue
            if isinstance(schema, dict):
                return schema
    return None


def _with_raw_newlines(value: Any) -> Any:
    """Return the value with a newline and a tab in every sentence (written raw by the caller); enum values and
    ids, which are not sentences, stay as they are."""
    if isinstance(value, str):
        return f"{value}\nSecond line:\tindented." if value.endswith(".") else value
    if isinstance(value, list):
        return [_with_raw_newlines(item) for item in value]
    if isinstance(value, dict):
        return {key: _with_raw_newlines(item) for key, item in value.items()}
    return value


def _with_nan(value: Any) -> Any:
    """Return the value with every number NaN and a NUL character in every sentence."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return math.nan
    if isinstance(value, str):
        return f"{value}\x00" if value.endswith(".") else value
    if isinstance(value, list):
        return [_with_nan(item) for item in value]
    if isinstance(value, dict):
        return {key: _with_nan(item) for key, item in value.items()}
    return value


def _without_required(schema: dict[str, Any] | None, example: Any) -> Any:
    if not isinstance(example, dict):
        return {"unexpected": example}
    required = set((schema or {}).get("required") or example)
    trimmed = {key: value for key, value in example.items() if key not in required}
    # Something must remain, or a caller could mistake the answer for an empty refusal.
    return trimmed or {"note": "required fields left out on purpose by FakeOpenAI"}


def _texts(messages: Any) -> list[str]:
    texts = []
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(part["text"] for part in content if isinstance(part, Mapping) and "text" in part)
    return texts


def _user_texts(messages: Any) -> list[str]:
    users = [message for message in messages if isinstance(message, Mapping) and message.get("role") == "user"]
    return _texts(users)


def _context_blocks(text: str) -> tuple[list[str], str]:
    blocks = [match["body"] for match in _CONTEXT_TAG.finditer(text)]
    if blocks:
        return blocks, _CONTEXT_TAG.sub(" ", text)
    heading = _CONTEXT_HEADING.search(text)
    if heading:
        return [text[heading.start() :]], text[: heading.start()]
    return [], text


def _find_subject(messages: Any) -> str:
    for text in _user_texts(messages):
        _, outside = _context_blocks(text)
        for pattern in (_SUBJECT, _JSON_SUBJECT):
            match = pattern.search(outside)
            if match:
                return _shorten(match["subject"])
    for text in reversed(_user_texts(messages)):
        for line in text.splitlines():
            cleaned = re.sub(r"<[^>]+>|^[#=*\s-]+", "", line).strip()
            if cleaned:
                return _shorten(cleaned)
    return "the ticket"


def _shorten(text: str, limit: int = 80) -> str:
    text = " ".join(text.split()).rstrip(".")
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _find_context_ids(messages: Any) -> list[str]:
    found: list[str] = []
    own: set[str] = set()
    for text in _user_texts(messages):
        blocks, outside = _context_blocks(text)
        # The ticket being enhanced is outside the context blocks; citing it as "related" would be wrong.
        own.update(match["id"] for match in _TICKET_ID.finditer(outside))
        for block in blocks:
            found.extend(match["id"] for match in _TICKET_ID.finditer(block))
    return [ticket for ticket in dict.fromkeys(found) if ticket not in own]


class _ExampleBuilder:
    """Build a value that satisfies a JSON schema, with text about the ticket subject."""

    def __init__(self, *, subject: str, context_ids: list[str], root: Mapping[str, Any]) -> None:
        self.subject = subject
        self.context_ids = context_ids
        self.root = root

    def sentence(self, name: str, index: int | None = None) -> str:
        """Return a short sentence for a field that mentions the subject."""
        label = name.replace("_", " ").strip().capitalize() or "Answer"
        if index is not None:
            label = f"{label} {index + 1}"
        return f"{label} for: {self.subject}."

    def _resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        seen = 0
        while "$ref" in schema and seen < 20:
            target: Any = self.root
            for part in str(schema["$ref"]).removeprefix("#/").split("/"):
                target = target.get(part, {}) if isinstance(target, Mapping) else {}
            schema, seen = target, seen + 1
        return schema

    def build(self, schema: Mapping[str, Any], *, name: str, index: int | None = None) -> Any:
        """Return an example value for the schema of the field called `name`."""
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        for key in ("anyOf", "oneOf", "allOf"):
            options = [self._resolve(option) for option in schema.get(key, [])]
            usable = [option for option in options if option.get("type") != "null"]
            if usable or options:
                return self.build((usable or options)[0], name=name, index=index)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((item for item in kind if item != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        if kind == "object":
            properties = schema.get("properties", {})
            return {key: self.build(value, name=key) for key, value in properties.items()}
        if kind == "array":
            return self._array(schema, name)
        if kind in ("integer", "number"):
            return self._number(schema, name, integer=kind == "integer")
        if kind == "boolean":
            return False
        if kind == "null":
            return None
        return self._string(schema, name, index)

    def _array(self, schema: Mapping[str, Any], name: str) -> list[Any]:
        items = self._resolve(schema.get("items") or {"type": "string"})
        maximum = schema.get("maxItems")
        if "related" in name or name.endswith("tickets"):
            ids = self.context_ids[: maximum if isinstance(maximum, int) else 3]
            return [self._ticket_item(items, ticket) for ticket in ids]
        count = max(int(schema.get("minItems", 0)), 2)
        if isinstance(maximum, int):
            count = min(count, maximum)
        singular = name.removesuffix("s")
        return [self.build(items, name=singular, index=index) for index in range(count)]

    def _ticket_item(self, items: Mapping[str, Any], ticket: str) -> Any:
        kind = items.get("type")
        if kind == "integer":
            return int(ticket)
        if kind == "object" or "properties" in items:
            value: dict[str, Any] = {}
            for key, sub in items.get("properties", {}).items():
                if key == "id" or key.endswith("_id"):
                    value[key] = int(ticket) if self._resolve(sub).get("type") == "integer" else ticket
                else:
                    value[key] = self.build(sub, name=key)
            return value
        return ticket

    @staticmethod
    def _number(schema: Mapping[str, Any], name: str, *, integer: bool) -> int | float:
        low: float | None = schema.get("minimum", schema.get("exclusiveMinimum"))
        high: float | None = schema.get("maximum", schema.get("exclusiveMaximum"))
        if low is not None and high is not None:
            value = low + (high - low) * 0.7
        elif low is not None:
            value = low + 1
        elif high is not None:
            value = high - 1 if integer else high * 0.7
        else:
            # Unbounded numbers in an enhancement are most likely a confidence or a count.
            value = 1.0 if integer else 0.7
        return round(value) if integer else round(value, 2)

    def _string(self, schema: Mapping[str, Any], name: str, index: int | None) -> str:
        fmt = schema.get("format")
        if fmt == "date-time":
            return datetime.now(UTC).isoformat(timespec="seconds")
        if fmt == "date":
            return datetime.now(UTC).date().isoformat()
        if fmt in ("uri", "url"):
            return "https://kb.example.com/articles/1"
        if fmt == "email":
            return "technician@example.com"
        text = self.sentence(name, index)
        maximum = schema.get("maxLength")
        return text[:maximum] if isinstance(maximum, int) else text


def main(argv: list[str] | None = None) -> None:
    """Run a FakeOpenAI in the foreground and print its base URL."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.openai", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument("--api-key", default="test-openai-key")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds to wait before each answer")
    parser.add_argument("--kind", choices=KINDS, default="openai", help="which kind of server to behave like")
    args = parser.parse_args(argv)
    fake = FakeOpenAI(args.api_key, latency=args.latency, host=args.host, port=args.port, kind=args.kind)

    def announce() -> None:
        print(fake.url, flush=True)
        print(f"FakeOpenAI api_key={fake.api_key} latency={fake.latency}s; Ctrl-C stops", file=sys.stderr, flush=True)

    fake.run_forever(announce)


if __name__ == "__main__":
    main()
