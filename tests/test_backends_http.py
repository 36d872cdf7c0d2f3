"""The OpenAI and Anthropic backends, with the real SDK clients, against a real local HTTP server."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from server import FakeAPIServer, Reply

from factory.errors import FactoryError, ModelCallError
from factory.models import Completion, GenParams, Message, Model, load_model
from factory.models.anthropic_backend import AnthropicModel
from factory.models.openai_backend import OpenAIModel

KEY = "sk-test-SECRET123"
USER: list[Message] = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDKs back off 0.5 s, 1 s, ... between retries; the retries, not the waiting, are under test."""
    monkeypatch.setattr("openai._base_client.INITIAL_RETRY_DELAY", 0.01)
    monkeypatch.setattr("anthropic._base_client.INITIAL_RETRY_DELAY", 0.01)


@pytest.fixture
def srv(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAPIServer]:
    with FakeAPIServer() as server:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        yield server


def call(model: Model, messages: list[Message] = USER, params: GenParams = GenParams()) -> Completion:
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
@pytest.mark.parametrize("fault", ["500", "429", "drop"])
def test_transient_fault_is_retried(srv: FakeAPIServer, spec: str, fault: str) -> None:
    srv.inject(fault)
    assert call(load_model(spec)).text == "Reply to: Name a colour."
    assert len(srv.requests) == 2


@pytest.mark.parametrize("spec", SPECS)
def test_persistent_fault_raises_without_the_key(srv: FakeAPIServer, spec: str) -> None:
    srv.inject("503", "503", "503")
    message = call_error(load_model(spec))
    assert "503" in message and "Service Unavailable" in message and spec in message
    assert KEY not in message
    assert len(srv.requests) == 3


@pytest.mark.parametrize("spec", SPECS)
def test_401_is_not_retried_and_the_echoed_key_is_redacted(srv: FakeAPIServer, spec: str) -> None:
    srv.inject("401")
    message = call_error(load_model(spec))
    assert "HTTP 401" in message and "Incorrect API key" in message
    assert KEY not in message
    assert len(srv.requests) == 1


@pytest.mark.parametrize("spec", SPECS)
def test_timeout_is_retried(srv: FakeAPIServer, spec: str) -> None:
    kind, name = spec.split(":")
    model = {"openai": OpenAIModel, "anthropic": AnthropicModel}[kind](spec, name, timeout=0.3)
    srv.inject("hang:1")
    assert call(model).text == "Reply to: Name a colour."
    assert len(srv.requests) == 2


@pytest.mark.parametrize("spec", SPECS)
def test_unreachable_server_raises(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    with FakeAPIServer() as stopped:
        url = stopped.url
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", url + "/v1")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
    message = call_error(load_model(spec))
    assert url in message and "3 attempts" in message


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
        "system": "Be brief.\n\nBe kind.",
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
