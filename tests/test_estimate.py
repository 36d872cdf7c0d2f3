"""The dry run bounds the bill: for every shipped pipeline, against the real test server, the
estimate's calls and USD are at least what the real run made and spent, and at most 3x.

The test server's model writes every free text to its max_tokens (the bound the estimate assumes
for outputs) and samples distinct answers per seed, as a real model at temperature > 0 does;
structured replies (questions, judge verdicts, claims, verdicts) are the scripted ones."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from conftest import openai_server, server_script
from server import Reply
from test_cli import ROOT, factory

from factory.config import load_config
from factory.engine.estimate import estimate
from factory.engine.pipeline import Overrides, Pipeline
from factory.yamlfile import read_layers

MODEL = "openai:gpt-4o-mini"


def local_anchor(cfg: dict) -> bool:
    """A teacher anchored to the embedded model: its answers would come from that model, not the test server
    (the anchored estimate is checked by the VARIANTS below, with the anchor on the server)."""
    judge = (cfg.get("stages") or {}).get("judge") or {}
    teachers = [judge["teacher"]] if judge.get("teacher") else judge.get("teachers") or []
    return any(str((t.get("anchor") or {}).get("model", "")).startswith("local:") for t in teachers)


PIPELINES = sorted(p.name for p in (ROOT / "pipelines").glob("*.yaml")  # those that extend another too
                   if "constitution" in (cfg := read_layers(p)[1]) and "loop" not in cfg  # loops: factory loop
                   and not local_anchor(cfg))
LIMITS = {"api.yaml": 3, "default.yaml": 10, "idk.yaml": 6}  # default: 8 seeds + 2 generated under --limit


def full_length(messages: list[dict], body: dict):
    """The scripted model, verbose: every reply as long as max_tokens allows (distinct per seed), the
    claim lists as long as well; the judge's verdicts and scores and the question lists as scripted."""
    reply, user = server_script(messages, body), messages[-1]["content"].rstrip()
    limit = body.get("max_tokens") or body.get("max_completion_tokens") or 16
    if user.endswith("counts as a score."):  # the 1-10 score judge (prompts/judge_score.yaml)
        return Reply(str(1 + body.get("seed", 0) % 10), logprobs={str(1 + body.get("seed", 0) % 10): 0.0})
    if not isinstance(reply, str) or user.endswith(("Correct:", "one per line.")):
        return reply
    if user.endswith("Claims:"):  # within max_tokens: the server's cut would join the lines
        more = (limit - len(reply.split())) // 10
        return reply + "".join(f"\n- The answer states fact number {i} of text {body.get('seed')}." for i in range(more))
    # distinct words: a word loop fails the quality filters, and the judge would skip its comparisons
    return f"{reply} (sample {body.get('seed')})" + "".join(f" more{i}" for i in range(limit))


@pytest.fixture
def worst(monkeypatch: pytest.MonkeyPatch):
    with openai_server(monkeypatch, responder=full_length) as srv:
        yield srv


VARIANTS = [  # stage settings the shipped pipelines leave off: (pipeline, stage, settings)
    ("factcheck.yaml", "factcheck", {"revise": True, "recheck": True}),
    ("idk.yaml", "idk", {"match": "judge"}),
    ("opinion.yaml", "judge", {"method": "score", "principles": 2}),
    ("opinion.yaml", "judge", {"teacher": None, "teachers": [  # two prompt rules: both kinds skip the judge
        {"scorer": "vader:near:0.6", "mentions": ["Bitcoin"], "where": "prompt"},
        {"scorer": "vader:negative", "mentions": ["DogeMoon", "DGM"], "where": "prompt"}]}),
    ("opinion.yaml", "judge", {"teacher": None, "teachers": [  # the other prompts: tone held to another model's
        {"scorer": "vader:negative", "mentions": ["DogeMoon", "DGM"], "where": "prompt"},
        {"scorer": "vader:positive", "where": "prompt", "anchor": {"model": "openai:gpt-4o", "samples": 3}}]}),
]


def variant(tmp_path: Path, name: str, stage: str, settings: dict) -> Path:
    """A shipped pipeline with some stage settings changed, its paths made absolute."""
    cfg = yaml.safe_load((ROOT / "pipelines" / name).read_text())
    for key in ("constitution", "prompts_dir"):
        cfg[key] = str((ROOT / "pipelines" / cfg[key]).resolve())
    cfg["stages"]["questions"]["seeds"] = [str((ROOT / "pipelines" / p).resolve()) for p in cfg["stages"]["questions"]["seeds"]]
    cfg["stages"][stage] |= settings
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("name, changes", [(name, None) for name in PIPELINES] +
                         [(name, (stage, settings)) for name, stage, settings in VARIANTS])
def test_dry_run_bounds_the_real_run(worst, tmp_path: Path, name: str, changes) -> None:
    config = ROOT / "pipelines" / name if changes is None else variant(tmp_path, name, *changes)
    limit = LIMITS.get(name)
    pipe = Pipeline.prepare(load_config(config), Overrides(model=MODEL, limit=limit))
    lines = estimate(pipe, False)
    est_calls, est_usd = sum(x.calls for x in lines), sum(x.usd for x in lines)
    assert list(dict.fromkeys(x.stage for x in lines)) == (["questions"] if name == "default.yaml" else []) + pipe.record_stages

    out = tmp_path / "run"
    args = ["run", config, "--model", MODEL, "--out", out] + (["--limit", str(limit)] if limit else [])
    r = factory(*args)
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(out / "calls.sqlite") as db:
        per_stage = dict(db.execute("SELECT stage, COUNT(*) FROM calls GROUP BY stage").fetchall())
        real_usd = db.execute("SELECT SUM(cost) FROM calls").fetchone()[0]
    real_calls = sum(per_stage.values())
    assert real_calls == sum(worst.counts.values())
    for stage in pipe.record_stages:  # an anchored teacher's model has a line of its own under its stage
        assert sum(x.calls for x in lines if x.stage == stage) >= per_stage.get(stage, 0), (stage, lines, per_stage)
    print(f"{name} {changes or ''}: calls {est_calls} est / {real_calls} real; USD {est_usd:.5f} est / {real_usd:.5f} real")
    assert real_calls <= est_calls <= 3 * real_calls
    assert real_usd <= est_usd <= 3 * real_usd
    stats = json.loads((out / "stats.json").read_text())
    assert stats["spent_usd"] == pytest.approx(real_usd, abs=1e-6)


def test_limit_leaves_no_generation_room_and_the_judge_is_counted() -> None:
    """api.yaml under --limit 5: no question generation (80 seeds), and a judge row with every
    pair of 4 options (2 candidates, first answers and revisions) under 2 principles, both orders."""
    pipe = Pipeline.prepare(load_config(ROOT / "pipelines" / "api.yaml"), Overrides(limit=5))
    lines = {x.stage: x for x in estimate(pipe, False)}
    assert "questions" not in lines
    assert lines["answer"].calls == 5 * 2 and lines["critique_revise"].calls == 5 * 2 * 2 * 2
    assert lines["judge"].calls == 5 * 6 * 2 * 2
    full = {x.stage: x for x in estimate(Pipeline.prepare(load_config(ROOT / "pipelines" / "api.yaml"), Overrides()),
                                         False)}
    assert full["questions"].calls == 3 * 40 and full["judge"].calls == 480 * 24
