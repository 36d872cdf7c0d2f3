"""The GPU path through vLLM: a vLLM OpenAI-compatible server as the `openai:` backend, judge included.

vLLM is not installable without a GPU, so the real local test server stands in, answering as
`vllm serve` does (vllm/entrypoints/openai/chat_completion/protocol.py): model ids with a slash, any
API key (or `EMPTY`) when started without --api-key, extra fields in every choice and message
(`stop_reason`, `reasoning_content`, `tool_calls`, `prompt_logprobs`, `kv_transfer_params`), a logprob
of -9999.0 for an impossible token, a 400 when top_logprobs passes --max-logprobs (20 by default),
and a 404 for a model it does not serve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import JUDGE_OPTIONS, run_lineage, server_script
from datasets import load_dataset
from server import FakeAPIServer, Reply
from test_cli import PROMPTS, ROOT, factory, write_prompts

SERVED = "Qwen/Qwen2.5-7B-Instruct"
MAX_LOGPROBS = 20  # vllm serve --max-logprobs (default)
IMPOSSIBLE = -9999.0  # what vLLM writes for a logprob of -inf


class VLLMServer(FakeAPIServer):
    """The test server, answering chat completions the way vLLM's OpenAI-compatible server does."""

    def _chat(self, path: str, headers: dict[str, str], body: dict):
        if body.get("model") != SERVED:
            return 404, {}, {"object": "error", "message": f"The model `{body.get('model')}` does not exist.",
                             "type": "NotFoundError", "param": None, "code": 404}
        if (body.get("top_logprobs") or 0) > MAX_LOGPROBS:
            return 400, {}, {"object": "error", "type": "BadRequestError", "param": None, "code": 400,
                             "message": f"Requested top logprobs of {body['top_logprobs']} exceeds maximum "
                                        f"of {MAX_LOGPROBS}."}
        status, extra, answer = super()._chat(path, headers, body)
        if status == 200:
            answer |= {"system_fingerprint": None, "prompt_logprobs": None, "kv_transfer_params": None,
                       "usage": answer["usage"] | {"prompt_tokens_details": None}}
            for choice in answer["choices"]:
                choice["stop_reason"] = None
                choice["message"] |= {"reasoning_content": None, "tool_calls": []}
        return status, extra, answer


def vllm_script(messages: list[dict], body: dict):
    """The scripted model; its judge is certain (the other letter impossible), as a strong judge often is."""
    found = JUDGE_OPTIONS.search(messages[-1]["content"])
    if found:
        better = "A" if "careful" in found.group(1) else "B"
        worse = "B" if better == "A" else "A"
        return Reply(better, logprobs={better: -0.0001, worse: IMPOSSIBLE} if body.get("logprobs") else None)
    return server_script(messages, body)


@pytest.fixture
def vllm(monkeypatch: pytest.MonkeyPatch):
    with VLLMServer(responder=vllm_script) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")
        yield srv


def judged_config(tmp_path: Path) -> Path:
    cfg = yaml.safe_load((ROOT / "pipelines" / "default.yaml").read_text())
    for key in ("constitution", "prompts_dir"):
        cfg[key] = str((ROOT / "pipelines" / cfg[key]).resolve())
    cfg["stages"]["questions"]["seeds"] = []
    cfg["stages"]["judge"] = {"compare": "both"}
    path = tmp_path / "judged.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_vllm_server_serves_every_stage_and_the_judge_reads_its_logprobs(vllm, tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = factory("run", judged_config(tmp_path), "--model", f"openai:{SERVED}", "--prompts",
                write_prompts(tmp_path / "p.jsonl", PROMPTS), "--out", out)
    assert r.returncode == 0, r.stderr
    chats = [q for q in vllm.requests if q["path"] == "/v1/chat/completions"]
    assert {q["body"]["model"] for q in chats} == {SERVED}
    assert {q["headers"]["authorization"] for q in chats} == {"Bearer EMPTY"}
    judged = [q["body"] for q in chats if q["body"].get("logprobs")]
    assert len(judged) == 2 * len(PROMPTS) and {b["top_logprobs"] for b in judged} == {MAX_LOGPROBS}

    verdicts = [v for rec in run_lineage(out) for c in rec["judgement"]["comparisons"] for v in c["verdicts"]]
    assert len(verdicts) == 2 * len(PROMPTS) and {v["source"] for v in verdicts} == {"logprobs"}
    prefs = load_dataset(str(out), "prefs")
    rows = [row for split in prefs.values() for row in split]
    assert len(rows) == len(PROMPTS)
    assert all(row["p_chosen"] > 0.99 and row["position_consistent"] for row in rows)
    assert all("careful" in row["chosen"][0]["content"] for row in rows)
    assert json.loads((out / "manifest.json").read_text())["models"] == [f"openai:{SERVED}"]


def test_a_model_the_server_does_not_serve_stops_the_run_with_its_message(vllm, tmp_path: Path) -> None:
    r = factory("run", "--model", "openai:Qwen/Qwen2.5-7B", "--prompts", write_prompts(tmp_path / "p.jsonl", PROMPTS),
                "--out", tmp_path / "run")
    assert r.returncode == 2 and "HTTP 404" in r.stderr and "Qwen/Qwen2.5-7B` does not exist" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_emulated_server_refuses_more_logprobs_than_vllm_allows(vllm) -> None:
    import urllib.error
    import urllib.request

    body = {"model": SERVED, "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 21}
    req = urllib.request.Request(vllm.url + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"content-type": "application/json", "authorization": "Bearer EMPTY"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 400  # so the judge's top_logprobs (20) is what keeps the first test passing
