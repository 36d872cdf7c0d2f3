"""BatchModel with the real SDK clients against the real local server's Batch APIs."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import anthropic
import pytest
from server import FakeAPIServer, Reply

from factory.errors import FactoryError, ModelCallError
from factory.models import Completion, GenParams, Message, Model, load_model
from factory.models.batch import BatchModel
from factory.models.batch_apis import PROVIDERS, custom_id

KEY = "sk-test-SECRET123"
SPECS = ["openai:gpt-test", "anthropic:claude-test"]
PROVIDER = {"openai:gpt-test": "openai", "anthropic:claude-test": "anthropic"}


@pytest.fixture
def srv(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAPIServer]:
    with FakeAPIServer(batch_delay=0.1) as server:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        yield server


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "batches.sqlite"


def batch_model(spec: str, store: Path, **options: object) -> BatchModel:
    return BatchModel(load_model(spec), store, poll_s=0.02, flush_s=0.05, **options)  # type: ignore[arg-type]


def prompts(n: int, tag: str = "q") -> list[list[Message]]:
    return [[{"role": "user", "content": f"{tag}{i}"}] for i in range(n)]


def run(model: Model, requests: list[list[Message]], params: GenParams | None = None) -> list[Completion]:
    """Every request at once, then close the model."""

    async def go() -> list[Completion]:
        try:
            calls = (model.complete(m, params or GenParams()) for m in requests)
            return await asyncio.wait_for(asyncio.gather(*calls), 10)
        finally:
            await model.aclose()

    return asyncio.run(go())


def texts(results: list[Completion]) -> list[str]:
    return [r.text for r in results]


def mentions(text: str) -> Callable[[str, dict], bool]:
    """A fail_batch_rows predicate: rows whose last message is exactly `text`."""
    return lambda cid, body: body["messages"][-1]["content"] == text


def online(path: str, srv: FakeAPIServer) -> list[dict]:
    return [r for r in srv.requests if r["path"] == path and r["method"] == "POST"]


def stored_batches(store: Path) -> list[tuple[str, str | None, str]]:
    with sqlite3.connect(store) as db:
        return db.execute("SELECT token, batch_id, status FROM batches ORDER BY created").fetchall()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


# --- batching --------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
def test_concurrent_calls_become_one_batch(srv: FakeAPIServer, store: Path, spec: str) -> None:
    results = run(batch_model(spec, store), prompts(6))
    assert texts(results) == [f"Reply to: q{i}" for i in range(6)]
    assert srv.rows_per_batch(PROVIDER[spec]) == [6]
    assert not online("/v1/chat/completions", srv) and not online("/v1/messages", srv)
    assert len(srv.uploads) == (1 if spec.startswith("openai") else 0)


@pytest.mark.parametrize("spec", SPECS)
def test_results_equal_the_online_backends(srv: FakeAPIServer, store: Path, spec: str) -> None:
    srv.responder = lambda messages, body: Reply("Yes indeed it is", logprobs={"Yes": -0.1, "No": -2.0})
    requests: list[list[Message]] = [[{"role": "system", "content": "Be brief."}, *m] for m in prompts(2)]
    params = GenParams(max_tokens=3, logprob_tokens=("Yes", "No"))
    batched = run(batch_model(spec, store), requests, params)
    direct = run(load_model(spec), requests, params)
    assert batched == direct
    assert batched[0].finish_reason == "length" and batched[0].text == "Yes indeed it"
    if spec.startswith("openai"):
        assert batched[0].logprobs == {"Yes": -0.1, "No": -2.0}


@pytest.mark.parametrize("spec", SPECS)
def test_identical_requests_share_one_row(srv: FakeAPIServer, store: Path, spec: str) -> None:
    results = run(batch_model(spec, store), prompts(1) * 3)
    assert texts(results) == ["Reply to: q0"] * 3
    assert srv.rows_per_batch() == [1]


@pytest.mark.parametrize("spec", SPECS)
def test_batches_split_at_max_requests(srv: FakeAPIServer, store: Path, spec: str) -> None:
    results = run(batch_model(spec, store, max_requests=3), prompts(7))
    assert texts(results) == [f"Reply to: q{i}" for i in range(7)]
    assert srv.rows_per_batch() == [3, 3, 1]


@pytest.mark.parametrize("spec", SPECS)
def test_batches_split_at_max_bytes(srv: FakeAPIServer, store: Path, spec: str) -> None:
    model = batch_model(spec, store)
    sizes = {f"q{i}": model.api.size(custom_id(PROVIDER[spec], "x", {}), model.api.request(m, GenParams()))
             for i, m in enumerate(prompts(7))}
    limit = model.api.overhead + 2 * max(sizes.values())  # two rows fit, never three
    asyncio.run(model.aclose())
    results = run(batch_model(spec, store, max_bytes=limit), prompts(7))
    assert texts(results) == [f"Reply to: q{i}" for i in range(7)]
    assert srv.rows_per_batch() == [2, 2, 2, 1]
    if spec.startswith("openai"):
        assert all(upload["bytes"] <= limit for upload in srv.uploads)


@pytest.mark.parametrize("spec", SPECS)
def test_a_request_larger_than_a_batch_fails_at_once(srv: FakeAPIServer, store: Path, spec: str) -> None:
    with pytest.raises(ModelCallError, match="more than a whole batch may hold"):
        run(batch_model(spec, store, max_bytes=100), [[{"role": "user", "content": "x" * 200}]])
    assert not srv.created_batches


@pytest.mark.parametrize("spec", SPECS)
def test_results_are_matched_by_custom_id_not_order(srv: FakeAPIServer, store: Path, spec: str) -> None:
    results = run(batch_model(spec, store), prompts(4))
    assert texts(results) == [f"Reply to: q{i}" for i in range(4)]
    # The server answered in another order than the rows were sent.
    batch = srv.created_batches[0]
    if spec.startswith("openai"):
        status = json.loads(_get(srv, f"/v1/batches/{batch.id}"))
        lines = _get(srv, f"/v1/files/{status['output_file_id']}/content").splitlines()
    else:
        lines = _get(srv, f"/v1/messages/batches/{batch.id}/results").splitlines()
    answered = [json.loads(line)["custom_id"] for line in lines]
    assert sorted(answered) == sorted(batch.custom_ids) and answered != batch.custom_ids


def _get(srv: FakeAPIServer, path: str) -> bytes:
    request = urllib.request.Request(srv.url + path, headers={"x-api-key": KEY})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read()


# --- failed rows -----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("kind", ["errored", "expired"])
def test_failed_rows_are_resubmitted(srv: FakeAPIServer, store: Path, spec: str, kind: str) -> None:
    srv.fail_batch_rows(mentions("q1"), kind)
    srv.fail_batch_rows(mentions("q3"), kind)
    model = batch_model(spec, store)
    results = run(model, prompts(5))
    assert texts(results) == [f"Reply to: q{i}" for i in range(5)]
    assert srv.rows_per_batch() == [5, 2]
    second = set(srv.created_batches[1].custom_ids)
    assert second == {custom_id(PROVIDER[spec], spec.split(":")[1], model.api.request(m, GenParams()))
                      for m in (prompts(5)[1], prompts(5)[3])}


@pytest.mark.parametrize(
    ("spec", "kind", "message"),
    [
        ("openai:gpt-test", "errored", "HTTP 500: The server had an error processing your request (injected)"),
        ("openai:gpt-test", "expired", "batch_expired: This request could not be executed before the completion"),
        ("anthropic:claude-test", "errored", "api_error: Internal server error (injected)"),
        ("anthropic:claude-test", "expired", "the request was expired before it ran"),
    ],
)
def test_a_row_failing_past_max_resubmits_raises(srv: FakeAPIServer, store: Path, spec: str, kind: str,
                                                 message: str) -> None:
    """The message comes from the provider's row: for OpenAI, from the error file."""
    srv.fail_batch_rows(mentions("q1"), kind, times=None)
    model = batch_model(spec, store, max_resubmits=2)

    async def go() -> list[Completion | BaseException]:
        try:
            return await asyncio.gather(*(model.complete(m, GenParams()) for m in prompts(3)), return_exceptions=True)
        finally:
            await model.aclose()

    results = asyncio.run(go())
    assert [r.text for r in results if isinstance(r, Completion)] == ["Reply to: q0", "Reply to: q2"]
    error = results[1]
    assert isinstance(error, ModelCallError) and not error.retryable
    assert message in str(error) and "3 times" in str(error) and spec in str(error)
    assert srv.rows_per_batch() == [3, 1, 1]


def test_an_openai_batch_that_fails_as_a_whole_is_resubmitted(srv: FakeAPIServer, store: Path) -> None:
    srv.fail_batch_rows(mentions("q0"), "failed")
    results = run(batch_model("openai:gpt-test", store), prompts(3))
    assert texts(results) == [f"Reply to: q{i}" for i in range(3)]
    assert srv.rows_per_batch() == [3, 3]


@pytest.mark.parametrize("spec", SPECS)
def test_transient_errors_do_not_stop_the_poller(srv: FakeAPIServer, store: Path, spec: str) -> None:
    model = batch_model(spec, store)

    async def go() -> list[Completion]:
        try:
            calls = asyncio.gather(*(model.complete(m, GenParams()) for m in prompts(3)))
            await until(lambda: bool(stored_batches(store)) and stored_batches(store)[0][1] is not None)
            srv.inject("503", "drop", "500")  # the next polls and downloads fail
            results = await asyncio.wait_for(calls, 10)
            # aiohttp may resend a GET whose keep-alive connection dropped, so a drop may not count.
            assert model.snapshot()["errors"] >= 2 and not srv._faults
            return results
        finally:
            await model.aclose()

    assert texts(asyncio.run(go())) == [f"Reply to: q{i}" for i in range(3)]
    assert srv.batch_count() == 1


@pytest.mark.parametrize("spec", SPECS)
def test_a_failed_create_is_retried_once_the_provider_has_no_batch(srv: FakeAPIServer, store: Path, spec: str) -> None:
    srv.inject("503")  # the upload (OpenAI) or the batch creation (Anthropic) fails
    results = run(batch_model(spec, store), prompts(2))
    assert texts(results) == ["Reply to: q0", "Reply to: q1"]
    assert srv.batch_count() == 1


@pytest.mark.parametrize("spec", SPECS)
def test_a_rejected_batch_fails_its_rows(srv: FakeAPIServer, store: Path, spec: str) -> None:
    srv.inject("401")  # the server echoes the key; the error must not
    with pytest.raises(ModelCallError) as info:
        run(batch_model(spec, store), prompts(2))
    assert info.value.fatal and not info.value.retryable
    assert "HTTP 401" in str(info.value) and KEY not in str(info.value)
    assert not srv.created_batches
    assert [status for _, _, status in stored_batches(store)] == ["rejected"]


# --- persistence and restarts ----------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
def test_a_restarted_model_waits_for_the_submitted_batch(srv: FakeAPIServer, store: Path, spec: str) -> None:
    srv.batch_delay = 0.5

    async def go() -> list[Completion]:
        first = batch_model(spec, store)
        calls = [asyncio.ensure_future(first.complete(m, GenParams())) for m in prompts(3)]
        await until(lambda: bool(stored_batches(store)) and stored_batches(store)[0][1] is not None)
        for call in calls:
            call.cancel()
        await first.aclose()  # the process "dies"; the batch runs on at the provider
        assert srv.batch_count() == 1 and first.snapshot()["batches"] == 1
        second = batch_model(spec, store)
        assert second.snapshot() == {"pending": 0, "submitted": 3, "batches": 1, "done": 0, "errors": 0}
        try:
            return await asyncio.wait_for(asyncio.gather(*(second.complete(m, GenParams()) for m in prompts(3))), 10)
        finally:
            assert second.snapshot()["done"] == 3
            await second.aclose()

    assert texts(asyncio.run(go())) == [f"Reply to: q{i}" for i in range(3)]
    assert srv.batch_count() == 1
    assert [status for _, _, status in stored_batches(store)] == ["ended"]


@pytest.mark.parametrize("spec", SPECS)
def test_a_stored_result_needs_no_request(srv: FakeAPIServer, store: Path, spec: str) -> None:
    first = run(batch_model(spec, store), prompts(2))
    before = len(srv.requests)
    again = run(batch_model(spec, store), prompts(2))
    assert again == first
    assert len(srv.requests) == before


@pytest.mark.parametrize("spec", SPECS)
def test_a_crash_between_create_and_storing_the_id_is_recovered(srv: FakeAPIServer, store: Path, spec: str) -> None:
    asyncio.run(_die_in_create(spec, store, after_create=True))
    assert [batch_id for _, batch_id, _ in stored_batches(store)] == [None]
    assert srv.batch_count() == 1
    results = run(batch_model(spec, store), prompts(3))
    assert texts(results) == [f"Reply to: q{i}" for i in range(3)]
    assert srv.batch_count() == 1  # found, not submitted again
    assert stored_batches(store)[0][1] == srv.created_batches[0].id


@pytest.mark.parametrize("spec", SPECS)
def test_an_intent_the_provider_never_saw_is_submitted(srv: FakeAPIServer, store: Path, spec: str) -> None:
    """The crash came before create(); a batch another client made meanwhile is not taken for ours."""
    asyncio.run(_die_in_create(spec, store, after_create=False))
    asyncio.run(_create_unrelated_batch(spec))
    results = run(batch_model(spec, store), prompts(3))
    assert texts(results) == [f"Reply to: q{i}" for i in range(3)]
    assert srv.rows_per_batch() == [2, 3]
    assert stored_batches(store)[0][1] == srv.created_batches[1].id


async def _create_unrelated_batch(spec: str) -> None:
    model = load_model(spec)
    rows = [(f"other-{i}", {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
            for i in range(2)]
    try:
        await PROVIDERS[PROVIDER[spec]](model).create("someone-else", rows)
    finally:
        await model.aclose()


async def _die_in_create(spec: str, store: Path, *, after_create: bool) -> None:
    """Submit three rows and 'crash' inside create(): after the provider made the batch, or before."""
    model = batch_model(spec, store)
    real_create = model.api.create
    reached = asyncio.Event()

    async def create(token: str, rows: list) -> str:
        if after_create:
            await real_create(token, rows)
        reached.set()
        await asyncio.Event().wait()  # never returns: the process dies here
        raise AssertionError

    model.api.create = create  # type: ignore[method-assign]
    calls = [asyncio.ensure_future(model.complete(m, GenParams())) for m in prompts(3)]
    await asyncio.wait_for(reached.wait(), 5)
    for call in calls:
        call.cancel()
    await model.aclose()


# --- custom ids and construction -------------------------------------------------------------


def test_custom_id_is_deterministic_and_valid_everywhere() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    cid = custom_id("anthropic", "m", body)
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", cid)
    assert cid == custom_id("anthropic", "m", dict(reversed(body.items())))
    assert len({cid, custom_id("openai", "m", body), custom_id("anthropic", "m2", body),
                custom_id("anthropic", "m", {**body, "max_tokens": 6})}) == 4


def test_anthropic_accepts_the_custom_ids(srv: FakeAPIServer, store: Path) -> None:
    run(batch_model("anthropic:claude-test", store), prompts(2))
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", cid) for cid in srv.created_batches[0].custom_ids)


def test_only_openai_and_anthropic_models_batch(store: Path) -> None:
    class Local(Model):
        spec = "local:smollm2"

        async def complete(self, messages: list[Message], params: GenParams) -> Completion:
            raise AssertionError

    with pytest.raises(FactoryError, match="--batch needs an openai: or anthropic: model; local:smollm2 has no batch API"):
        BatchModel(Local(), store)


def test_limits_never_exceed_the_providers(srv: FakeAPIServer, store: Path) -> None:
    anthropic_model = batch_model("anthropic:claude-test", store, max_requests=10**9, max_bytes=10**12)
    openai_model = batch_model("openai:gpt-test", store, max_requests=10)
    assert (anthropic_model.max_requests, anthropic_model.max_bytes) == (100_000, 256_000_000)
    assert (openai_model.max_requests, openai_model.max_bytes) == (10, 200_000_000)
    for model in (anthropic_model, openai_model):
        asyncio.run(model.aclose())


# --- the server itself -----------------------------------------------------------------------


def test_server_rejects_an_invalid_anthropic_custom_id(srv: FakeAPIServer) -> None:
    async def go() -> None:
        client = anthropic.AsyncAnthropic(max_retries=0)
        try:
            await client.messages.batches.create(requests=[
                {"custom_id": "not valid!", "params": {"model": "m", "max_tokens": 5, "messages": []}}])
        finally:
            await client.close()

    with pytest.raises(anthropic.BadRequestError, match="custom_id"):
        asyncio.run(go())
    assert not srv.created_batches


def _chat(srv: FakeAPIServer, path: str = "/v1/chat/completions") -> tuple[int, dict[str, str]]:
    body = json.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "a b"}]}).encode()
    request = urllib.request.Request(srv.url + path, body, {"Content-Type": "application/json", "x-api-key": KEY})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def test_server_rate_limit_headers_and_enforcement() -> None:
    with FakeAPIServer(rate_limit_headers=True, rpm=100, tpm=1000, enforce_rpm=2, window_s=0.5) as srv:
        first, second = _chat(srv), _chat(srv, "/v1/messages")
        assert first[0] == second[0] == 200
        assert (first[1]["x-ratelimit-limit-requests"], first[1]["x-ratelimit-remaining-requests"]) == ("100", "99")
        assert (first[1]["x-ratelimit-limit-tokens"], first[1]["x-ratelimit-remaining-tokens"]) == ("1000", "993")
        assert second[1]["anthropic-ratelimit-requests-remaining"] == "98"
        assert second[1]["anthropic-ratelimit-tokens-limit"] == "1000"
        status, headers = _chat(srv)
        assert (status, headers["Retry-After"]) == (429, "1")
        time.sleep(0.55)
        assert _chat(srv)[0] == 200


def test_server_latency_jitter_and_seeded_faults() -> None:
    """The same seed draws the same faults; seed 16 draws no hang in its first ten requests."""
    runs = []
    for _ in range(2):
        outcomes: list[tuple[object, ...]] = []
        with FakeAPIServer(latency=0.03, jitter=0.02, fault_rate=0.5, seed=16) as srv:
            for _ in range(10):
                start = time.monotonic()
                try:
                    status, headers = _chat(srv)
                except (ConnectionError, urllib.error.URLError):
                    outcomes.append(("drop",))
                    continue
                assert 0.01 <= time.monotonic() - start < 0.5
                outcomes.append((status, headers.get("Retry-After")))
        runs.append(outcomes)
    assert runs[0] == runs[1]
    statuses = [o[0] for o in runs[0]]
    assert 200 in statuses and {"drop", 429, 500, 503} <= set(statuses)
    assert all(outcome == (429, "1") for outcome in runs[0] if outcome[0] == 429)


def test_server_runs_as_a_process() -> None:
    command = [sys.executable, str(Path(__file__).with_name("server.py")), "--port", "0", "--latency", "0.01"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as process:
        try:
            url = process.stdout.readline().strip()  # type: ignore[union-attr]
            assert url.startswith("http://127.0.0.1:")
            body = json.dumps({"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "hello"}]})
            request = urllib.request.Request(url + "/v1/chat/completions", body.encode(), {"Authorization": f"Bearer {KEY}"})
            with urllib.request.urlopen(request, timeout=10) as response:
                assert json.loads(response.read())["choices"][0]["message"]["content"] == "Reply to: hello"
        finally:
            process.terminate()
    assert process.returncode == 0  # SIGTERM ends it cleanly
