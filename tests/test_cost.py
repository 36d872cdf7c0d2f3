"""Costs that count once and a cap that holds: calls served from a cache cost this run nothing (the
saved amount is shown beside the spent one), and --max-cost reserves input by a bound no tokenizer
passes, so dense text (CJK, code) cannot take spending past it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import openai_server
from test_cli import PROMPTS, api_config, factory, write_prompts

from factory.engine.calllog import CallLog
from factory.engine.prices import CHARS_PER_TOKEN, token_bound
from factory.models import Completion

MODEL = "openai:gpt-4o-mini"


def test_a_call_reused_from_the_shared_cache_costs_this_run_nothing(tmp_path: Path) -> None:
    shared, log = CallLog(tmp_path / "shared.sqlite"), CallLog(tmp_path / "run.sqlite")
    shared.put("k", "answer", MODEL, "answer", "h", "{}", Completion("hi", 1000, 10, "stop"), 0.1, 0.25)
    log.copy_from(shared, "k")
    assert log.get("k").text == "hi"
    assert log.spent() == 0 and log.saved() == pytest.approx(0.25)
    assert log.totals()["answer"]["cost_usd"] == 0
    shared.close()
    log.close()


def test_shared_cache_spent_and_saved(api, tmp_path: Path) -> None:
    cache, prompts = tmp_path / "shared", write_prompts(tmp_path / "p.jsonl", PROMPTS)
    r = factory("run", "--model", MODEL, "--prompts", write_prompts(tmp_path / "first.jsonl", PROMPTS[:3]),
                "--cache-dir", cache, "--out", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    first = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert first["spent_usd"] > 0 and first["saved_usd"] == 0
    api.requests.clear()
    r = factory("run", "--model", MODEL, "--prompts", prompts, "--cache-dir", cache, "--out", tmp_path / "b")
    assert r.returncode == 0, r.stderr
    assert len(api.requests) == 2 * 3  # only the two new prompts are called
    second = json.loads((tmp_path / "b" / "stats.json").read_text())
    paid = sum(s["cost_usd"] for s in second["stages"].values())
    assert second["spent_usd"] == pytest.approx(paid, abs=1e-6) and paid > 0
    assert second["saved_usd"] == pytest.approx(first["spent_usd"], abs=1e-6)
    assert second["stages"]["answer"]["saved_usd"] > 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["spent_usd"] == second["spent_usd"] and manifest["saved_usd"] == second["saved_usd"]
    assert "USD saved" in r.stderr


def test_token_bound_holds_for_dense_text() -> None:
    cjk, code = "東京は日本の首都です。" * 50, "x=[i**2for i in range(9)if i%2];" * 20
    for text in (cjk, code):
        messages = [{"role": "user", "content": text}]
        assert token_bound(messages) >= len(text.encode()) > len(text) // CHARS_PER_TOKEN


@pytest.fixture
def dense(monkeypatch: pytest.MonkeyPatch):
    """The test server counting one token per character, as tokenizers roughly do for CJK."""
    with openai_server(monkeypatch, tokens=len) as srv:
        yield srv


def test_max_cost_holds_on_dense_text(dense, tmp_path: Path) -> None:
    """Three short prompts, then prompts of 4,000 CJK characters: about 4,000 tokens each, where
    characters / 4 guessed 1,000. One of those costs more than the whole budget; the guess let it
    through, the byte bound does not. The run stops at the budget and never passes it."""
    stages = {"questions": {"generate": 0}, "answer": {"max_tokens": 8}, "critique_revise": None}
    config = api_config(tmp_path, stages=stages, concurrency=1)
    dense_prompts = [f"{i}: " + "東京は日本の首都です。" * 400 for i in range(4)]
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:3] + dense_prompts)
    limit = 0.0005  # one dense call costs about 0.0006
    r = factory("run", config, "--model", MODEL, "--prompts", prompts, "--max-cost", str(limit), "--out", tmp_path / "run")
    assert r.returncode == 3, r.stderr  # stopped at the budget
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert 0 < stats["spent_usd"] <= limit
    assert stats["stages"]["answer"]["calls"] == 3  # the short prompts were answered
