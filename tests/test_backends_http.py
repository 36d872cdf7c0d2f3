"""The OpenAI and Anthropic backends, with the real SDK clients, against a real local HTTP server."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import pytest
from conftest import KEY
from server import FakeAPIServer, Reply

from factory.errors import FactoryError, ModelCallError
from factory.models import Completion, GenParams, Message, Model, load_model

USER: list[Message] = [{"role": "user", "content": "Name a colour."}]


def call(model: Model, messages: list[Message] = USER, params: GenParams | None = None) -> Completion:
    params = params or GenParams()

    async def go() -> Completion:
        try:
            return await model.complete(messages, params)
        finally:
            await model.aclose()

    return asyncio.run(go())


def call_error(model: Model, messages: list[Message] = USER) -> str:
    with pytest.raises(ModelCallError) as info:
        call(model, messages)
    return str(info.value)


SPECS = ["openai:gpt-test", "anthropic:claude-test"]


# --- both backends ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
def test_text_usage_and_finish_reason(srv: FakeAPIServer, spec: str) -> None:
    result = call(load_model(spec), [{"role": "user", "content": "Name a colour please"}])
    assert result == Completion("Reply to: Name a colour please", 4, 6, "stop", None)
    assert srv.requests[0]["body"]["model"] == spec.split(":")[1]


@pytest.mark.parametrize("spec", SPECS)
def test_length_finish_reason(srv: FakeAPIServer, spec: str) -> None:
    result = call(load_model(spec), params=GenParams(max_tokens=2))
    assert (result.text, result.finish_reason, result.completion_tokens) == ("Reply to:", "length", 2)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize(("fault", "status"), [("500", 500), ("503", 503), ("429", 429), ("408", 408), ("drop", None)])
def test_transient_fault_is_one_retryable_error(srv: FakeAPIServer, spec: str, fault: str, status: int | None) -> None:
    """The SDKs' own retries are off: one attempt, one request, an error the caller's retry layer can read."""
    srv.inject(fault)
    with pytest.raises(ModelCallError) as info:
        call(load_model(spec))
    e = info.value
    assert (e.retryable, e.fatal, e.status) == (True, False, status)
    assert e.retry_after == (0.0 if fault == "429" else None)  # the server sends Retry-After: 0 with a 429
    assert len(srv.requests) == 1 and KEY not in str(e)
    assert call(load_model(spec)).text == "Reply to: Name a colour."


@pytest.mark.parametrize("spec", SPECS)
def test_client_errors_are_not_retryable(srv: FakeAPIServer, spec: str) -> None:
    srv.inject("400")
    with pytest.raises(ModelCallError) as info:
        call(load_model(spec))
    assert (info.value.retryable, info.value.fatal, info.value.status) == (False, False, 400)


@pytest.mark.parametrize("spec", SPECS)
def test_401_is_fatal_and_the_echoed_key_is_redacted(srv: FakeAPIServer, spec: str) -> None:
    srv.inject("401")
    with pytest.raises(ModelCallError) as info:
        call(load_model(spec))
    message = str(info.value)
    assert "HTTP 401" in message and "Incorrect API key" in message and spec in message
    assert KEY not in message and info.value.fatal and not info.value.retryable
    assert len(srv.requests) == 1


@pytest.mark.parametrize("spec", SPECS)
def test_unreachable_server_is_retryable(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    with FakeAPIServer() as stopped:
        url = stopped.url
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", url + "/v1")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
    with pytest.raises(ModelCallError) as info:
        call(load_model(spec))
    assert url in str(info.value) and info.value.retryable and info.value.status is None


@pytest.mark.parametrize("spec", SPECS)
def test_rate_limit_headers_reach_the_completion(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    with FakeAPIServer(rate_limit_headers=True, rpm=5000, tpm=400000) as server:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        limits = call(load_model(spec)).limits
    assert limits is not None and (limits.requests_limit, limits.tokens_limit) == (5000, 400000)


@pytest.mark.parametrize(("spec", "variable"), [(SPECS[0], "OPENAI_API_KEY"), (SPECS[1], "ANTHROPIC_API_KEY")])
@pytest.mark.parametrize("value", [None, ""])
def test_missing_key(monkeypatch: pytest.MonkeyPatch, spec: str, variable: str, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv(variable, raising=False)
    else:
        monkeypatch.setenv(variable, value)
    with pytest.raises(FactoryError, match=variable):
        load_model(spec)


@pytest.mark.parametrize("spec", SPECS)
def test_aclose_is_safe_before_use(srv: FakeAPIServer, spec: str) -> None:
    asyncio.run(load_model(spec).aclose())


@pytest.mark.parametrize("spec", SPECS)
def test_concurrent_calls(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    with FakeAPIServer(latency=0.2) as server:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        model = load_model(spec)

        async def go() -> list[Completion]:
            try:
                prompts: list[list[Message]] = [[{"role": "user", "content": f"q{i}"}] for i in range(50)]
                return await asyncio.gather(*(model.complete(p, GenParams()) for p in prompts))
            finally:
                await model.aclose()

        start = time.monotonic()
        results = asyncio.run(go())
        elapsed = time.monotonic() - start
    assert [r.text for r in results] == [f"Reply to: q{i}" for i in range(50)]
    assert elapsed < 2.5, f"50 calls of 0.2 s took {elapsed:.2f} s"


# --- OpenAI ----------------------------------------------------------------------------------


def test_openai_request(srv: FakeAPIServer) -> None:
    params = GenParams(temperature=0.3, top_p=0.9, max_tokens=50, seed=7, stop=("\n\n", "END"))
    call(load_model("openai:gpt-test"), [{"role": "system", "content": "Be brief."}, *USER], params)
    request = srv.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == f"Bearer {KEY}"
    body = request["body"]
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, *USER]
    assert {k: body[k] for k in ("temperature", "top_p", "max_tokens", "seed", "stop")} == {
        "temperature": 0.3, "top_p": 0.9, "max_tokens": 50, "seed": 7, "stop": ["\n\n", "END"],
    }
    assert "logprobs" not in body


def test_openai_omits_unset_seed_and_stop(srv: FakeAPIServer) -> None:
    call(load_model("openai:gpt-test"))
    assert not {"seed", "stop"} & srv.requests[0]["body"].keys()


def test_openai_logprobs(srv: FakeAPIServer) -> None:
    srv.responder = lambda messages, body: Reply("Yes", logprobs={"Yes": -0.1, " yes": -2.5, "No": -3.0, "A": -9.0})
    result = call(load_model("openai:gpt-test"), params=GenParams(logprob_tokens=("yes", "No", "Maybe")))
    assert result.logprobs == {"yes": -2.5, "No": -3.0}  # matching strips whitespace but keeps case
    body = srv.requests[0]["body"]
    assert (body["logprobs"], body["top_logprobs"]) == (True, 20)


def test_openai_logprobs_keep_the_best_match(srv: FakeAPIServer) -> None:
    srv.responder = lambda messages, body: Reply("Yes", logprobs={"Yes": -0.1, " Yes": -2.5, "No": -3.0})
    result = call(load_model("openai:gpt-test"), params=GenParams(logprob_tokens=("Yes", "No")))
    assert result.logprobs == {"Yes": -0.1, "No": -3.0}


def test_openai_base_url_comes_from_the_environment(srv: FakeAPIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeAPIServer() as other:
        monkeypatch.setenv("OPENAI_BASE_URL", other.url + "/v1")
        call(load_model("openai:gpt-test"))
        assert len(other.requests) == 1 and not srv.requests


# --- Anthropic -------------------------------------------------------------------------------


def test_anthropic_request(srv: FakeAPIServer) -> None:
    messages: list[Message] = [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Be kind."},
        *USER,
    ]
    params = GenParams(temperature=0.3, top_p=0.9, max_tokens=50, seed=7, stop=("END",), logprob_tokens=("Yes",))
    result = call(load_model("anthropic:claude-test"), messages, params)
    assert result.logprobs is None
    request = srv.requests[0]
    assert request["path"] == "/v1/messages"
    body = request["body"]
    assert body == {
        "model": "claude-test",
        "max_tokens": 50,
        "system": [{"type": "text", "text": "Be brief.\n\nBe kind.", "cache_control": {"type": "ephemeral"}}],
        "messages": USER,
        "stop_sequences": ["END"],
    }


def test_anthropic_stop_sequence_maps_to_stop(srv: FakeAPIServer) -> None:
    srv.responder = lambda messages, body: Reply("Red", finish_reason="stop_sequence")
    assert call(load_model("anthropic:claude-test")).finish_reason == "stop"


def test_anthropic_other_stop_reasons_pass_through(srv: FakeAPIServer) -> None:
    srv.responder = lambda messages, body: Reply("", finish_reason="refusal")
    assert call(load_model("anthropic:claude-test")).finish_reason == "refusal"


# --- the server itself -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/v1/chat/completions", {"error": {"message": "missing API key", "type": "authentication_error", "code": "401"}}),
        ("/v1/messages", {"type": "error", "error": {"type": "authentication_error", "message": "missing API key"}}),
    ],
)
def test_server_requires_a_key(srv: FakeAPIServer, path: str, error: dict) -> None:
    body = json.dumps({"model": "m", "max_tokens": 5, "messages": USER}).encode()
    request = urllib.request.Request(srv.url + path, body, {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 401
    assert json.loads(info.value.read()) == error


def test_server_rejects_unknown_faults() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        FakeAPIServer().inject("boom")


def test_anthropic_api_version_is_the_sdks() -> None:
    from anthropic._constants import ANTHROPIC_API_VERSION

    from factory.models.anthropic_backend import API_VERSION

    assert API_VERSION == ANTHROPIC_API_VERSION


@pytest.mark.parametrize("spec", SPECS)
def test_online_calls_do_not_import_the_sdk(srv: FakeAPIServer, spec: str) -> None:
    """The SDKs cost memory and start-up time; only the Batch API needs them."""
    import subprocess
    import sys

    code = (f"import sys, asyncio; from factory.models import load_model, GenParams; m = load_model({spec!r}); "
            "asyncio.run(m.complete([{'role': 'user', 'content': 'hi'}], GenParams())); "
            "print(sorted({'openai', 'anthropic'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# --- prompt caching -------------------------------------------------------------------------------

SHARED: list[Message] = [{"role": "system", "content": "You review answers against one principle. " * 3}]


@pytest.mark.parametrize("spec", SPECS)
def test_cached_prompt_tokens_are_read_and_priced(srv: FakeAPIServer, spec: str) -> None:
    """The shared system text goes first; the second call reads it from the provider's cache, and the
    usage fields become cached_tokens (and Anthropic's cache writes) priced at their own rates."""
    from factory.engine.prices import load_prices

    srv.prompt_cache = True
    first = call(load_model(spec), [*SHARED, {"role": "user", "content": "First question here"}])
    second = call(load_model(spec), [*SHARED, {"role": "user", "content": "Another question"}])
    shared = len(SHARED[0]["content"].split())
    assert (first.cached_tokens, second.cached_tokens) == (0, shared)
    assert first.prompt_tokens == shared + 3 and second.prompt_tokens == shared + 2
    written = shared if spec.startswith("anthropic") else 0
    assert (first.cache_write_tokens, second.cache_write_tokens) == (written, 0)
    provider, name = ("openai", "gpt-4o-mini") if spec.startswith("openai") else ("anthropic", "claude-haiku-4-5")
    prices = load_prices()
    p = prices.price(provider, name)
    cost = prices.cost(provider, name, second.prompt_tokens, second.completion_tokens, cached_tokens=shared)
    assert cost == pytest.approx((2 * p.input + shared * p.cached_input + second.completion_tokens * p.output) / 1e6)
    assert cost < prices.cost(provider, name, second.prompt_tokens, second.completion_tokens)
    write = prices.cost(provider, name, first.prompt_tokens, 0, cache_write_tokens=first.cache_write_tokens)
    assert write == pytest.approx((3 * p.input + written * (p.cache_write or p.input) + (shared - written) * p.input) / 1e6)
