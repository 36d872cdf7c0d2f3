"""OpenAI request shapes per model (openai_models.yaml): reasoning models get max_completion_tokens
and no sampling parameters, logprobs or stop sequences; the test server refuses a classic request
to them with the 400 the API sends."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_cli import PROMPTS, ROOT, factory, write_prompts

from factory.errors import ModelCallError
from factory.models import GenParams, load_model
from factory.models.openai_backend import openai_request

PARAMS = GenParams(temperature=0.7, top_p=0.9, max_tokens=50, seed=7, stop=("END",), logprob_tokens=("A", "B"))
USER = [{"role": "user", "content": "Hello there"}]


def complete(spec: str, params: GenParams = PARAMS):
    async def go():
        model = load_model(spec)
        try:
            return await model.complete(USER, params)
        finally:
            await model.aclose()

    return asyncio.run(go())


def test_the_server_refuses_classic_requests_to_reasoning_models_as_the_api_does(srv) -> None:
    body = {"model": "o3", "messages": USER, "max_tokens": 10, "temperature": 0.7}
    request = urllib.request.Request(srv.url + "/v1/chat/completions", json.dumps(body).encode(),
                                     {"authorization": "Bearer k", "content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request)
    error = json.loads(e.value.read())["error"]
    assert e.value.code == 400 and "Use 'max_completion_tokens' instead" in error["message"]
    srv.responder = lambda messages, body: "fine"
    assert openai_request("gpt-4o-mini", USER, PARAMS)["max_tokens"] == 50


@pytest.mark.parametrize("model", ["o3", "o4-mini-2025-04-16", "gpt-5-mini", "gpt-5"])
def test_reasoning_models_get_their_shape(srv, model: str) -> None:
    result = complete(f"openai:{model}")
    assert result.text.startswith("Reply to")
    body = srv.requests[-1]["body"]
    assert body["max_completion_tokens"] == 50 and body["seed"] == 7
    assert not {"max_tokens", "temperature", "top_p", "logprobs", "top_logprobs", "stop"} & body.keys()


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4.1", "my-vllm-model"])
def test_other_models_keep_the_classic_shape(srv, model: str) -> None:
    complete(f"openai:{model}")
    body = srv.requests[-1]["body"]
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["stop"], body["logprobs"]) == (
        50, 0.7, 0.9, ["END"], True)


def test_a_classic_request_to_a_reasoning_model_fails_without_the_table(srv, monkeypatch) -> None:
    from factory.models import shapes

    monkeypatch.setattr(shapes.Shapes, "openai_shape", lambda self, model: shapes.Shape())
    with pytest.raises(ModelCallError, match="max_completion_tokens") as e:
        complete("openai:o3")
    assert not e.value.retryable


def test_a_run_with_a_reasoning_model_and_a_judge(api, tmp_path: Path) -> None:
    r = factory("run", ROOT / "pipelines" / "api.yaml", "--model", "openai:o4-mini",
                "--prompts", write_prompts(tmp_path / "p.jsonl", PROMPTS[:2]), "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert stats["failed_records"] == 0 and stats["stages"]["judge"]["counters"].get("verdict:parsed", 0) > 0
    assert all("max_completion_tokens" in q["body"] for q in api.requests)
