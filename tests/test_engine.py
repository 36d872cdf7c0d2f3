"""The engine's parts: the retry layer, timeouts from observed latency, parse retries, the shared
cache and the budget. HTTP behaviour is driven through the real SDKs against the real local server."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from conftest import KEY, ScriptedModel, make_caller
from server import FakeAPIServer
from test_cli import PROMPTS, factory, write_prompts

from factory.config import TimeoutsConfig
from factory.engine.calllog import CallLog
from factory.engine.endpoint import Timeouts
from factory.engine.prices import Budget, load_prices
from factory.errors import BudgetExceeded, ModelCallError, ParseError, ParseFailure
from factory.models import GenParams, load_model
from factory.prompts import load_template
from factory.stages import answer


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("factory.engine.retry.FIRST_BACKOFF_S", 0.01)


def answer_call(caller, spec: str, prompt: str = "Name a colour."):
    template = load_template(Path(__file__).parent.parent / "prompts", "answer", answer.VARIABLES)

    async def go():
        try:
            return await caller.chat("answer", "answer[0]", template, {"prompt": prompt}, spec, GenParams(max_tokens=20))
        finally:
            for e in caller.endpoints.values():
                await e.model.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("spec", ["openai:m", "anthropic:m"])
def test_one_retry_layer_rides_out_mixed_faults(srv: FakeAPIServer, tmp_path: Path, spec: str) -> None:
    srv.inject("500", "429", "drop", "503", "408")
    log = CallLog(tmp_path / "calls.sqlite")
    caller = make_caller({spec: load_model(spec)}, log)
    out, ref = answer_call(caller, spec)
    assert out.text.startswith("Reply to:") and not ref.cached
    assert len(srv.requests) == 6  # five faults, one success: no SDK retries on top
    st = caller.stats["answer"]
    assert (st.retries, st.failed_calls, st.rate_limited, st.calls) == (5, 5, 1, 1)
    assert log.db.execute("SELECT count(*) FROM errors").fetchone()[0] == 5
    assert log.db.execute("SELECT count(*) FROM calls").fetchone()[0] == 1


def test_attempts_are_bounded(srv: FakeAPIServer, tmp_path: Path) -> None:
    srv.inject(*["500"] * 10)
    caller = make_caller({"openai:m": load_model("openai:m")}, CallLog(tmp_path / "c.sqlite"),
                         retries={"max_attempts": 3})
    with pytest.raises(ModelCallError, match="HTTP 500"):
        answer_call(caller, "openai:m")
    assert len(srv.requests) == 3


def test_client_errors_are_not_retried(srv: FakeAPIServer, tmp_path: Path) -> None:
    srv.inject("400")
    caller = make_caller({"openai:m": load_model("openai:m")}, CallLog(tmp_path / "c.sqlite"))
    with pytest.raises(ModelCallError, match="HTTP 400"):
        answer_call(caller, "openai:m")
    assert len(srv.requests) == 1


def test_a_hung_request_is_cut_and_retried(srv: FakeAPIServer, tmp_path: Path) -> None:
    srv.inject("hang:30")
    caller = make_caller({"openai:m": load_model("openai:m")}, CallLog(tmp_path / "c.sqlite"),
                         timeouts={"initial": 0.5})
    out, _ = answer_call(caller, "openai:m")
    assert out.text.startswith("Reply to:") and len(srv.requests) == 2
    assert caller.endpoints["openai:m"].counts["timeouts"] == 1


def test_timeouts_follow_observed_latency() -> None:
    t = Timeouts(TimeoutsConfig(initial=60, multiplier=4, min=0.5, max=30))
    assert t("answer") == 60
    for i in range(40):
        t.observe("answer", 0.2 + (i % 5) * 0.01)
    assert t("answer") == pytest.approx(4 * 0.24, rel=0.01)
    assert t("critique") == 60  # each template learns on its own
    for _ in range(256):
        t.observe("answer", 20.0)
    assert t("answer") == 30  # clamped at max


def test_output_that_does_not_parse_is_sampled_again_then_fails(tmp_path: Path) -> None:
    outputs = iter(["nonsense", "still nonsense", "OK: 42", "x", "y", "z"])
    model = ScriptedModel(lambda messages, params: next(outputs))
    caller = make_caller({"fake:m": model}, CallLog(tmp_path / "c.sqlite"))
    template = load_template(Path(__file__).parent.parent / "prompts", "answer", answer.VARIABLES)

    def parse(text: str) -> int:
        if not text.startswith("OK:"):
            raise ParseError(f"no OK in {text!r}")
        return int(text.split(":")[1])

    async def go(prompt: str):
        return await caller.chat_parsed("answer", "a", template, {"prompt": prompt}, "fake:m", GenParams(seed=1), parse)

    value, _, ref = asyncio.run(go("first"))
    assert value == 42 and len(model.calls) == 3
    seeds = [p.seed for _, p in model.calls]
    assert len(set(seeds)) == 3  # each fresh sample has its own seed and its own cache entry
    with pytest.raises(ParseFailure, match="did not parse after 3 samples"):
        asyncio.run(go("second"))
    assert caller.stats["answer"].counters == {"parse_retry": 4, "parse_failure": 1}
    value, _, _ = asyncio.run(go("first"))  # cached: the failed samples and the good one
    assert value == 42 and len(model.calls) == 6


def test_budget_never_lets_spending_pass_the_limit() -> None:
    b = Budget(0.01)
    b.reserve(0.004)
    b.reserve(0.004)
    with pytest.raises(BudgetExceeded, match="max-cost 0.01"):
        b.reserve(0.004)
    b.settle(0.004, 0.001)
    b.reserve(0.004)  # the settled call cost less than its worst case: room again
    assert b.spent == pytest.approx(0.001) and b.reserved == pytest.approx(0.008)
    assert Budget(None).reserve(1e9) is None


def test_prices_match_snapshots_and_discount_batches() -> None:
    prices = load_prices()
    assert prices.cost("openai", "gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)
    assert prices.cost("openai", "gpt-4o-mini-2024-07-18", 0, 1_000_000) == pytest.approx(0.60)
    assert prices.cost("anthropic", "claude-haiku-4-5", 1_000_000, 1_000_000, batch=True) == pytest.approx(3.0)
    assert prices.cost("openai", "unknown-model", 1, 1) is None
    assert prices.cost("local", "smollm2", 10**9, 10**9) == 0


def test_shared_cache_lets_a_new_run_reuse_old_calls(api, tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS)
    cache = tmp_path / "shared"
    r = factory("run", "--model", "openai:m", "--prompts", prompts, "--cache-dir", cache, "--out", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    assert len(api.requests) == 15
    api.requests.clear()
    r = factory("run", "--model", "openai:m", "--prompts", prompts, "--cache-dir", cache, "--out", tmp_path / "b")
    assert r.returncode == 0, r.stderr
    assert not api.requests
    stats = json.loads((tmp_path / "b" / "stats.json").read_text())
    assert stats["stages"]["answer"]["cached_calls"] == 5 and stats["run_totals"]["answer"]["calls"] == 5


def many_calls(caller, spec: str, n: int) -> float:
    template = load_template(Path(__file__).parent.parent / "prompts", "answer", answer.VARIABLES)

    async def go() -> None:
        try:
            await asyncio.gather(*(caller.chat("answer", f"a{i}", template, {"prompt": f"question {i}"}, spec,
                                               GenParams(max_tokens=20)) for i in range(n)))
        finally:
            for e in caller.endpoints.values():
                await e.model.aclose()

    start = time.monotonic()
    asyncio.run(go())
    return time.monotonic() - start


@pytest.mark.slow  # waits on the paced rate
def test_limits_from_the_providers_headers_pace_requests(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with FakeAPIServer(rate_limit_headers=True, rpm=600, tpm=10**7) as server:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        caller = make_caller({"openai:m": load_model("openai:m")}, CallLog(tmp_path / "c.sqlite"), concurrency=64)
        many_calls(caller, "openai:m", 1)  # learns 600 requests per minute from the headers
        assert caller.endpoints["openai:m"].limiter.effective_rpm == 600
        elapsed = many_calls(caller, "openai:m", 40)
    assert 2.0 < elapsed < 6.0  # 10 per second after a one-second burst, not all 40 at once


@pytest.mark.slow  # waits out backoffs
def test_429s_slow_the_endpoint_down_smoothly_and_every_call_completes(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    with FakeAPIServer(enforce_rpm=20, window_s=1.0) as server:  # at most 20 requests a second
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        caller = make_caller({"openai:m": load_model("openai:m")}, CallLog(tmp_path / "c.sqlite"), concurrency=32,
                             retries={"max_attempts": 20})
        elapsed = many_calls(caller, "openai:m", 100)
        statuses = server.counts
    endpoint = caller.endpoints["openai:m"]
    st = caller.stats["answer"]
    assert st.calls == 100 and statuses.get("ok") == 100
    # In the first second every call is refused once (slots freed by waiting retries go to new
    # calls); from then on the learned cap paces the endpoint and 429s become rare.
    assert 0 < st.rate_limited <= 120
    snapshot = endpoint.limiter.snapshot()
    assert 800 < snapshot["rpm"] / snapshot["factor"] < 1600  # the cap learned: about 20 a second
    assert elapsed < 15  # 100 calls at 20 a second take 5 s at best
