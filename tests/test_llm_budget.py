"""One LLM budget for the whole deployment: worker processes slow down before the provider answers 429.

The provider is the OpenAI fake enforcing requests and tokens per minute as OpenAI does (quantized to 1 s buckets,
429 with Retry-After). The process test runs two qcluster processes against a private Redis on both runs (the
budget is shared through Redis; without REDIS_URL it is per process, for local runs only).
"""

from __future__ import annotations

import contextlib
import threading

import openai
import pytest

from enhancements import llm_budget
from tests.fakes.openai import FakeOpenAI
from tests.test_faults import private_redis, rig  # noqa: F401 - private_redis is a fixture

LIMITED = {"requests_per_minute": 120, "tokens_per_minute": 36_000}


def _concurrent_calls(llm: FakeOpenAI, count: int) -> None:
    client = openai.OpenAI(api_key=llm.api_key, base_url=llm.url, max_retries=0, timeout=5)

    def call() -> None:
        with contextlib.suppress(openai.RateLimitError):
            client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "x" * 2000}])

    threads = [threading.Thread(target=call) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_the_fake_enforces_its_limits_like_openai():
    with FakeOpenAI() as llm:
        llm.rate_limit(**LIMITED)
        _concurrent_calls(llm, 8)
        assert llm.rate_limited > 0
        client = openai.OpenAI(api_key=llm.api_key, base_url=llm.url, max_retries=0, timeout=5)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "x" * 2000}])
        headers = caught.value.response.headers
        assert float(headers["retry-after"]) > 0
        assert headers["x-ratelimit-limit-requests"] == "120" and headers["x-ratelimit-limit-tokens"] == "36000"
        assert caught.value.code == "rate_limit_exceeded"


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "per-process"])
def test_budget_spends_requests_and_tokens_then_asks_to_wait(settings, private_redis, shared):  # noqa: F811
    settings.REDIS_URL = private_redis.url if shared else ""
    settings.LLM_REQUESTS_PER_MINUTE = 60  # one a second
    settings.LLM_TOKENS_PER_MINUTE = 0
    settings.LLM_BUDGET_MAX_WAIT = 0
    llm_budget._redis.cache_clear()
    key = {"base_url": "http://llm.test/v1", "api_key": f"k-{shared}"}
    try:
        llm_budget.reserve(**key, tokens=100)
        with pytest.raises(llm_budget.BudgetExhausted) as caught:
            llm_budget.reserve(**key, tokens=100)
        assert 0 < caught.value.retry_after <= 1.0
        # Another key has its own budget.
        llm_budget.reserve(base_url=key["base_url"], api_key="another", tokens=100)

        # Tokens: a reservation larger than the burst passes alone, then the stream waits for it to drain;
        # settling with what the provider counted gives the difference back.
        settings.LLM_REQUESTS_PER_MINUTE = 0
        settings.LLM_TOKENS_PER_MINUTE = 6000  # 100 a second, 1 s of burst
        tokens = {"base_url": "http://llm.test/v1", "api_key": f"t-{shared}"}
        llm_budget.reserve(**tokens, tokens=1000)
        with pytest.raises(llm_budget.BudgetExhausted) as caught:
            llm_budget.reserve(**tokens, tokens=50)
        assert caught.value.retry_after > 8
        llm_budget.settle(**tokens, reserved=1000, used=40)
        llm_budget.reserve(**tokens, tokens=50)

        # A 429 from the provider pauses the budget for everyone for its Retry-After.
        paused = {"base_url": "http://llm.test/v1", "api_key": f"p-{shared}"}
        llm_budget.pause(**paused, seconds=30)
        with pytest.raises(llm_budget.BudgetExhausted) as caught:
            llm_budget.reserve(**paused, tokens=10)
        assert 25 < caught.value.retry_after <= 31
    finally:
        llm_budget._redis.cache_clear()


def test_budget_off_by_default_never_waits(settings):
    assert settings.LLM_REQUESTS_PER_MINUTE == 0 and settings.LLM_TOKENS_PER_MINUTE == 0
    settings.LLM_BUDGET_MAX_WAIT = 0
    for _ in range(100):
        llm_budget.reserve(base_url=None, api_key="k", tokens=10_000)


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_worker_processes_share_one_budget_and_the_provider_never_answers_429(tmp_path, sdp, private_redis):  # noqa: F811
    with FakeOpenAI() as llm:
        llm.rate_limit(**LIMITED)
        env = {
            "LLM_PROVIDER": "openai",
            "OPENAI_API_KEY": llm.api_key,
            "OPENAI_BASE_URL": llm.url,
            "OPENAI_MODEL": "fake-model",
            "LLM_TIMEOUT": "10",
            # A little under the provider's limits, as the runbook says to set them.
            "LLM_REQUESTS_PER_MINUTE": "100",
            "LLM_TOKENS_PER_MINUTE": "24000",
            "LLM_COMPLETION_TOKENS_ESTIMATE": "200",
            "LLM_BUDGET_MAX_WAIT": "120",
            # Two clusters x 2 processes x 2 threads: 8 calls at once without the budget (the fake would refuse most).
            "Q_WORKERS": "2",
            "ENHANCEMENT_THREADS": "2",
        }
        with rig(tmp_path, sdp, broker_url=private_redis.url, workers=2, **env) as r:
            ids = [r.accepted(f"990{n:02d}") for n in range(12)]
            rows = r.wait_finished(ids, timeout=150)
            for row in rows.values():
                r.assert_one_note(row)
                # The LLM's answer, not the offline fallback a 429 storm ends in.
                assert (row.provider, row.error) == ("openai", ""), row.error
            assert llm.rate_limited == 0, f"the provider answered 429 {llm.rate_limited} times"
            completions = [r for r in llm.requests_log if r.path.endswith("/chat/completions")]
            assert len(completions) == 12
            # Both clusters called the LLM: the budget was shared, not one process doing all the work.
            workers = {row.worker.rsplit(":", 1)[1] for row in rows.values()}
            assert len(workers) >= 2, workers
            assert all(row.prompt_tokens and row.completion_tokens for row in rows.values())


@pytest.mark.parametrize("failure", ["timeout", 401])
def test_a_timed_out_call_counts_its_estimate_and_a_refused_one_gives_it_back(openai_fake, settings, failure):
    # The provider bills a request that completed on its side after the client gave up, so a timeout keeps its
    # reservation (the estimate) as spent; the budget drains it within the minute like any call, nothing is held.
    from enhancements.llm_structured import LLMError, structured_complete

    settings.LLM_TIMEOUT = 0.3
    settings.LLM_REQUESTS_PER_MINUTE, settings.LLM_TOKENS_PER_MINUTE = 0, 6000  # 100 tokens a second, 1 s burst
    settings.LLM_BUDGET_MAX_WAIT = 0
    openai_fake.fail_next(3, failure, delay=1.0)
    call = {"system": "Answer.", "user": "x" * 400, "schema": {"type": "object"}, "name": "t", "model": "fake-model"}
    estimate = llm_budget.estimate_tokens(len("Answer.") + 400)  # json_schema mode: no schema in the prompt
    key = {"base_url": settings.OPENAI_BASE_URL, "api_key": settings.OPENAI_API_KEY}
    if failure == 401:
        with pytest.raises(LLMError):
            structured_complete(**call)
        llm_budget.reserve(**key, tokens=100)  # settled to nothing: the whole burst is free again
        return
    # The retry of the timed-out request needs its own place, and the first one's estimate is still spent.
    with pytest.raises(llm_budget.BudgetExhausted):
        structured_complete(**call)
    assert len(openai_fake.requests_log) == 1
    with pytest.raises(llm_budget.BudgetExhausted) as caught:
        llm_budget.reserve(**key, tokens=100)
    # Still spent: the estimate (less the time since) stands between this reservation and the burst.
    assert 0 < caught.value.retry_after <= estimate / 100


@pytest.mark.parametrize("failure", [500, 429])
def test_every_request_a_retried_call_sends_takes_its_place_in_the_budget(openai_fake, settings, failure):
    # Two failures then an answer: three requests reach the provider, so three places are spent. One request a
    # minute with a burst of three minutes holds exactly three (the seconds the test takes drain almost none).
    from enhancements.llm_structured import structured_complete

    settings.LLM_REQUESTS_PER_MINUTE, settings.LLM_TOKENS_PER_MINUTE = 1, 0
    settings.LLM_BUDGET_BURST_SECONDS = 180
    settings.LLM_BUDGET_MAX_WAIT = 0
    openai_fake.fail_next(2, failure, retry_after=0.1 if failure == 429 else None)
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    result = structured_complete(system="Answer.", user="x" * 400, schema=schema, name="t", model="fake-model")
    assert result.output["answer"] and result.requests == 1  # one ask of the call, its retries are not asks
    sent = [r for r in openai_fake.requests_log if r.path.endswith("/chat/completions")]
    assert len(sent) == 3

    key = {"base_url": settings.OPENAI_BASE_URL, "api_key": settings.OPENAI_API_KEY}
    with pytest.raises(llm_budget.BudgetExhausted) as caught:
        llm_budget.reserve(**key, tokens=100)  # a fourth request has no room: the retries were counted
    assert caught.value.retry_after > 30


def test_retries_stop_where_the_task_would_be_killed_by_its_timeout(openai_fake, settings):
    # Half of Q_TIMEOUT is the call's share: a retry after a 3 s Retry-After, plus one more request of LLM_TIMEOUT
    # (2 s), does not fit in 4 s, so the first failure is the answer (before: a second request after 3 s).
    from enhancements.llm_structured import LLMError, structured_complete

    settings.Q_TIMEOUT = 8
    openai_fake.fail_next(1, 429, retry_after=3)
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    with pytest.raises(LLMError, match="RateLimitError"):
        structured_complete(system="Answer.", user="x", schema=schema, name="t", model="fake-model")
    assert len([r for r in openai_fake.requests_log if r.path.endswith("/chat/completions")]) == 1
    # With room for it, the same failure is retried.
    settings.Q_TIMEOUT = 60
    openai_fake.fail_next(1, 429, retry_after=0.1)
    assert structured_complete(system="Answer.", user="x", schema=schema, name="t", model="fake-model").output
