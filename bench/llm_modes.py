"""What negotiating the LLM output mode costs: requests and time per call for each kind of server, and the CPU of
the tolerant extraction against a plain json.loads.

Run (see docs/benchmarks.md, "LLM output modes"):

    .venv/bin/python -m bench.llm_modes --calls 200

Against the OpenAI fake (tests/fakes/openai.py) on loopback, for each server kind: the first call (which
probes), then `--calls` calls in the remembered mode, timed against the same number of calls to the "openai"
kind in the same run (the baseline: json_schema on the first try). Then json_extract on a typical answer (bare,
fenced, amid prose) and on hostile ones (60,000 open braces, an endless string), each against json.loads of the
bare answer. The 1-minute load average is printed with each figure; the machine is shared, so read the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time


def _load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.environ.pop("REDIS_URL", None)
    from tests.fakes.openai import FakeOpenAI

    fake = FakeOpenAI().start()
    os.environ.update(
        {"OPENAI_API_KEY": fake.api_key, "OPENAI_BASE_URL": fake.url, "LLM_PROVIDER": "openai", "LLM_TIMEOUT": "5"}
    )
    os.environ.pop("LLM_REQUESTS_PER_MINUTE", None)
    os.environ.pop("LLM_TOKENS_PER_MINUTE", None)
    import django

    django.setup()
    from enhancements.llm import ACCEPTED_SCHEMA, OUTPUT_SCHEMA, SYSTEM_PROMPT
    from enhancements.llm_json import json_extract
    from enhancements.llm_structured import modes_forget, structured_complete

    user = (
        "<ticket>\nSubject: VPN drops every few minutes\n\nThe VPN drops since this morning.\n</ticket>\n\n"
        '<context>\n{"similar_tickets": [{"sdp_id": "98765", "subject": "VPN drops"}]}\n</context>'
    )

    def call() -> str:
        return structured_complete(
            system=SYSTEM_PROMPT, user=user, schema=OUTPUT_SCHEMA, accept=ACCEPTED_SCHEMA,
            name="ticket_enhancement", model="fake-model",
        ).mode  # fmt: skip

    print("| kind | mode remembered | requests, first call | first call ms | per call after, ms | ratio | load |")
    print("|---|---|---|---|---|---|---|")
    baseline: float | None = None
    for kind in ("openai", "lmstudio", "newlines", "vllm", "ollama-old", "old-gateway", "ignores-format"):
        modes_forget()
        fake.reset()
        fake.set_kind(kind)
        start = time.perf_counter()
        mode = call()
        first_ms = (time.perf_counter() - start) * 1000
        probes = fake.chat_requests()
        start = time.perf_counter()
        for _ in range(args.calls):
            call()
        per_call = (time.perf_counter() - start) * 1000 / args.calls
        baseline = baseline or per_call
        print(
            f"| {kind} | {mode} | {probes} | {first_ms:.1f} | {per_call:.2f} | {per_call / baseline:.2f} | {_load()} |"
        )
    fake.stop()

    answer = json.dumps(
        {
            "summary": "VPN drops every few minutes since this morning; FortiClient idle timeout likely.",
            "probable_causes": ["Idle timeout on the gateway.", "Wi-Fi power saving."],
            "suggested_steps": ["Raise the idle timeout.", "Disable Wi-Fi power saving.", "Update FortiClient."],
            "related_tickets": ["98765"],
            "category_suggestion": "Network",
            "priority_suggestion": "High",
            "confidence": 0.7,
        }
    )
    cases = {
        "bare": answer,
        "fenced": f"```json\n{answer}\n```",
        "amid prose": f"Here is my analysis of the ticket. {answer} Hope it helps!",
        "60,000 open braces": "{" * 60_000,
        "endless string": '{"summary": "' + "x" * 100_000,
    }
    runs = 2000
    start = time.perf_counter()
    for _ in range(runs):
        json.loads(answer)
    base_us = (time.perf_counter() - start) * 1e6 / runs
    print(f"\njson.loads of the bare answer ({len(answer)} chars): {base_us:.1f} µs, load {_load()}\n")
    print("| content | json_extract µs | ratio to json.loads | load |")
    print("|---|---|---|---|")
    for name, content in cases.items():
        count = runs if len(content) < 10_000 else 20
        start = time.perf_counter()
        for _ in range(count):
            with contextlib.suppress(ValueError):
                json_extract(content)
        spent = (time.perf_counter() - start) * 1e6 / count
        print(f"| {name} | {spent:.1f} | {spent / base_us:.1f} | {_load()} |")


if __name__ == "__main__":
    main()
