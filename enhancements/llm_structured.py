"""Structured completions on any OpenAI-compatible server: negotiate the output mode per endpoint, remember it.

OpenAI, newer Ollama (0.5+) and LM Studio honour `response_format: json_schema` with `strict`; vLLM's grammar
backends refuse some schemas with a 400 ("The provided JSON schema contains features not supported by
xgrammar."); LM Studio refuses `json_object` with a 400 ("'response_format.type' must be 'json_schema' or
'text'"); Ollama before 0.5 accepted `json_schema` and ignored it (prose back, often with a fenced JSON block);
older gateways (Azure before 2024-08-01-preview: "Unrecognized request argument supplied: response_format" or
"response_format value as json_schema is enabled only for api versions ...") refuse the field itself.

So a call tries, in order, `json_schema` (strict) -> `json_object` (the schema described in the prompt) ->
`prompt` (no response_format; the schema in the prompt), and steps down ONLY on an answer that means "this mode
is unsupported":
- HTTP 400 or 422 whose error names the mode (response_format, json_schema, JSON schema, json_object, strict,
  guided decoding, grammar, structured output);
- HTTP 200 under `json_schema` or `json_object` whose content is not one JSON object (prose, Markdown fences,
  an empty answer) twice in a row: the server took a mode it does not honour. (Once is asked again in the same
  mode, so one odd answer from a server that does honour it does not change the endpoint's mode for a day.)
Anything else keeps today's rules (project/retry.py): timeouts, 429 and 5xx are retried twice
(enhancements/llm_client.py, by the openai SDK's rules, every request through the shared budget) and then fail
the call; other 4xx fail it; a JSON object that fails the schema is asked for once more in the
same mode, then fails it. A failed call is the caller's offline fallback, labelled with the reason.

Only the error's message fields are read for those words (OpenAI's `error.message` and `error.param`, a top-level
`message`, `detail` or FastAPI's `detail[].msg` / `detail[].loc`, or a plain-text body): a 400 or 422 that echoes
the request (pydantic's `input`, a gateway's copy of the prompt, which in the prompt modes holds the schema) names
the mode without refusing it.

The mode that worked, or that none did, is remembered per endpoint, model and schema: enhancements/llm_modes.py.

Content is read tolerantly (enhancements/llm_json.py): Markdown fences are stripped, the first balanced JSON
object is taken from surrounding prose, raw newlines and tabs inside strings are accepted
(`json.loads(strict=False)`), a JSON object sent as a JSON string is unwrapped; then the value is made
storable (`tickets.storable.storable_json`: NaN, Infinity and numbers beyond float range become null, NUL
characters are removed) and validated against the schema. Every request sent, each retry included, goes
through the shared budget (enhancements/llm_budget.py) and one cached client per (base URL, key, timeout).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import jsonschema
import openai
from django.conf import settings

from enhancements import llm_budget
from enhancements.llm_client import chat_complete, openai_client
from enhancements.llm_json import json_document, json_extract, schema_instruction
from enhancements.llm_modes import (  # noqa: F401 (re-exported: the callers' and tests' names)
    MODE_TTL,
    MODES,
    NONE,
    NONE_TTL,
    PROMPT_UNPROVEN,
    _mode_key,
    mode_remember,
    mode_remembered,
    modes_forget,
)
from tickets.ai_budget import llm_usage_record
from tickets.models import Tenant
from tickets.storable import storable_json

logger = logging.getLogger(__name__)


# What a 400/422 says when the refused part is the output mode (vLLM, LM Studio, Azure, FastAPI-based gateways).
_MODE_WORDS = re.compile(
    r"response[_ ]format|json[_ ]?schema|json[_ ]object|\bstrict\b|guided|grammar|structured[_ ]output",
    re.IGNORECASE,
)


class LLMError(Exception):
    """A provider failure (any kind: the pipeline falls back to the offline provider)."""


class _Unsupported(LLMError):
    """The server answered in a way that means the mode is not supported: step down."""


class _Mismatch(LLMError):
    """The answer held no usable JSON object, or one that fails the schema: ask once more."""


class _Ignored(_Mismatch):
    """HTTP 200 but no JSON object: asked twice, the mode is ignored (without a response_format: no JSON comes)."""


@dataclass
class StructuredResult:
    """A schema-valid JSON object, the mode that produced it, and the tokens every request of the call used."""

    output: dict[str, Any]
    mode: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    requests: int = 0


# --- the call ---------------------------------------------------------------------------------------------------
def _error_words(body: object) -> list[str]:
    """Return the parts of an error body that say what was refused: its message fields, never echoed input."""
    if isinstance(body, str):
        return [body]  # a plain-text body, or `{"error": "<message>"}` (LM Studio), which the client unwraps
    if not isinstance(body, dict):
        return []
    words: list[str] = []
    for field in ("message", "error", "detail", "msg", "param"):
        value = body.get(field)
        if isinstance(value, str):
            words.append(value)
        elif isinstance(value, dict):
            words += _error_words({k: value.get(k) for k in ("message", "param")})
        elif isinstance(value, list):  # FastAPI/pydantic: [{"loc": [...], "msg": ..., "input": <echoed>}]
            for item in value[:20]:
                if isinstance(item, dict):
                    words.append(str(item.get("msg") or ""))
                    words.append(" ".join(str(part) for part in item.get("loc") or [] if isinstance(part, str)))
                elif isinstance(item, str):
                    words.append(item)
    return words


def _is_mode_refusal(exc: openai.APIStatusError) -> bool:
    if exc.status_code not in (400, 422):
        return False
    # The client keeps OpenAI's `error` object as the body (else the whole JSON body, else the text).
    return any(_MODE_WORDS.search(text) for text in _error_words(exc.body))


def _request(
    *,
    mode: str,
    system: str,
    user: str,
    schema: dict[str, Any],
    name: str,
    model: str,
    temperature: float,
    tenant: Tenant | None,
) -> Any:
    base_url, api_key = settings.OPENAI_BASE_URL, settings.OPENAI_API_KEY
    client = openai_client(base_url, api_key, settings.LLM_TIMEOUT)
    if mode != "json_schema":
        system += schema_instruction(schema)
    extra: dict[str, Any] = {}
    if mode == "json_schema":
        extra["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": name, "strict": True, "schema": schema},
        }
    elif mode == "json_object":
        extra["response_format"] = {"type": "json_object"}
    reserved = llm_budget.estimate_tokens(len(system) + len(user))
    try:
        # Waits while the deployment's shared budget is spent; raises BudgetExhausted past LLM_BUDGET_MAX_WAIT.
        response = chat_complete(
            client, base_url=base_url, api_key=api_key, tokens=reserved,
            model=model,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            temperature=temperature,
            **extra,
        )  # fmt: skip
    except openai.APIStatusError as exc:
        detail = f"HTTP {exc.status_code}: {str(exc.message)[:300]}"
        if mode != "prompt" and _is_mode_refusal(exc):
            raise _Unsupported(detail) from exc
        raise LLMError(f"The LLM call failed: {exc.__class__.__name__}: {detail}") from exc
    except openai.OpenAIError as exc:
        raise LLMError(f"The LLM call failed: {exc.__class__.__name__}: {exc}") from exc
    usage = getattr(response, "usage", None)
    llm_budget.settle(base_url=base_url, api_key=api_key, reserved=reserved, used=getattr(usage, "total_tokens", None))
    if tenant is not None:
        # Every answer counts against the tenant's day (tickets/ai_budget.py), a probe or one that fails the
        # schema too; without a reported usage, the estimate.
        estimate = getattr(usage, "total_tokens", None) is None
        completion = settings.LLM_COMPLETION_TOKENS_ESTIMATE
        llm_usage_record(
            tenant=tenant,
            model=model,
            prompt_tokens=reserved - completion if estimate else getattr(usage, "prompt_tokens", 0),
            completion_tokens=completion if estimate else getattr(usage, "completion_tokens", 0),
        )
    return response


def _parse(response: Any, *, mode: str, accept: dict[str, Any]) -> dict[str, Any]:
    try:
        choice = response.choices[0]
        refusal = getattr(choice.message, "refusal", None)
        content = choice.message.content or ""
    except (IndexError, AttributeError, TypeError) as exc:
        raise _Mismatch(f"the answer had no message: {exc}") from exc
    # A refusal or an answer cut off at the token limit says nothing about the mode: no step down for them.
    if refusal:
        raise _Mismatch(f"the model refused: {str(refusal)[:120]!r}")
    if getattr(choice, "finish_reason", None) == "length":
        raise _Mismatch("the answer was cut off at the token limit")
    if not isinstance(content, str):
        raise _Mismatch("the answer's content is not text")
    try:
        output = json_document(content) if mode != "prompt" else json_extract(content)
    except ValueError as exc:
        if mode != "prompt":
            raise _Ignored(f"HTTP 200 but the content is not a JSON object: {content[:120]!r}") from exc
        raise _Ignored(f"the answer held no JSON object: {content[:120]!r}") from exc
    output = storable_json(output, repair=True)
    try:
        jsonschema.validate(output, accept)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "the object"
        raise _Mismatch(f"the answer did not match the schema at {where}: {exc.message[:200]}") from exc
    return output


def structured_complete(
    *,
    system: str,
    user: str,
    schema: dict[str, Any],
    name: str,
    model: str,
    accept: dict[str, Any] | None = None,
    temperature: float = 0.2,
    tenant: Tenant | None = None,
) -> StructuredResult:
    """Return a JSON object valid against `accept` (default `schema`); raise LLMError or BudgetExhausted.

    With `tenant`, every answer's tokens are added to the tenant's daily AI budget.
    """
    base_url = settings.OPENAI_BASE_URL
    accept = accept or schema
    remembered = mode_remembered(base_url=base_url, model=model, schema=schema)
    if remembered == NONE:
        raise LLMError(
            f"No structured-output mode worked on this endpoint for the {name} schema within the last "
            f"{NONE_TTL // 60} min; not asked again until then"
        )
    unproven = remembered == PROMPT_UNPROVEN
    modes = ("prompt",) if unproven else MODES[MODES.index(remembered) :] if remembered else MODES
    prompt_tokens = completion_tokens = requests = 0
    refused: list[str] = []
    for mode in modes:
        last: _Mismatch | None = None
        ignored = 0
        try:
            for _ in range(2):
                requests += 1
                response = _request(
                    mode=mode, system=system, user=user, schema=schema, name=name, model=model,
                    temperature=temperature, tenant=tenant,
                )  # fmt: skip
                usage = getattr(response, "usage", None)
                prompt_tokens += getattr(usage, "prompt_tokens", None) or 0
                completion_tokens += getattr(usage, "completion_tokens", None) or 0
                try:
                    output = _parse(response, mode=mode, accept=accept)
                except _Mismatch as exc:
                    last, ignored = exc, ignored + isinstance(exc, _Ignored)
                    continue
                if mode != remembered:
                    mode_remember(base_url=base_url, model=model, schema=schema, mode=mode)
                    if refused:
                        logger.info("LLM %s at %s: using %s (%s)", model, base_url, mode, "; ".join(refused))
                return StructuredResult(
                    output=output,
                    mode=mode,
                    prompt_tokens=prompt_tokens or None,
                    completion_tokens=completion_tokens or None,
                    requests=requests,
                )
        except _Unsupported as exc:
            refused.append(f"{mode} unsupported: {exc}")
            continue
        # No JSON twice in the prompt mode says the endpoint writes none only when this call saw a
        # response_format refused or ignored too; a remembered prompt mode failing twice is this ticket's.
        if ignored == 2 and (mode != "prompt" or refused or unproven):
            refused.append(f"{mode} {'gave no JSON object' if mode == 'prompt' else 'ignored'} twice: {last}")
            continue
        after = f" (after {'; '.join(refused)})" if refused else ""
        raise LLMError(f"The LLM answer ({mode} mode, asked twice): {last}{after}")
    if not unproven:
        # This ticket's answers may be prose for its own reasons: the next call tries the prompt mode once more.
        mode_remember(base_url=base_url, model=model, schema=schema, mode=PROMPT_UNPROVEN)
        raise LLMError(
            f"No structured-output mode gave a JSON object for this ticket ({'; '.join(refused)}); the next call "
            f"tries the prompt mode once more before the endpoint is given up for {NONE_TTL // 60} min"
        )
    mode_remember(base_url=base_url, model=model, schema=schema, mode=NONE)
    logger.warning(
        "LLM %s at %s: no structured-output mode works for the %s schema; offline for %d min (%s)",
        model, base_url, name, NONE_TTL // 60, "; ".join(refused),
    )  # fmt: skip
    raise LLMError(
        f"No structured-output mode works on this endpoint for the {name} schema (not asked again for "
        f"{NONE_TTL // 60} min): " + "; ".join(refused)
    )
