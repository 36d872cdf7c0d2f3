"""`factory loop`: rounds of generate, label, train, evaluate with the suite's tiny model as the policy
and the test server as the fixed judge; the manifest, resume after SIGKILL, the table and report, and
bad input exiting 2 before any model loads."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import JUDGE_OPTIONS, last_user
from server import Reply
from test_cli import factory
from test_train import tiny  # noqa: F401  (the fixture)

from factory.config import ROOT
from factory.loop.config import load_loop
from factory.yamlfile import read_layers

TRAIN = ["How do I boil an egg?", "What is a good name for a cat?", "How do I tie a tie?", "Why is the sky blue?",
         "How do I fold a shirt?", "What should I cook tonight?"]
HELD = ["How do I water a plant?", "What is a nice colour for a room?", "How do I sharpen a pencil?"]


def judge(messages: list[dict], body: dict):
    """The judge's taste: arbitrary but fixed (the larger hash wins), so every distinct pair has a clear
    preference, consistent across positions."""
    found = JUDGE_OPTIONS.search(last_user(messages))
    if not found:
        return "unused"
    a, b = (int(hashlib.sha256(t.encode()).hexdigest(), 16) for t in found.groups())
    p_a = 0.5 if a == b else 0.9 if a > b else 0.1
    return Reply("A" if p_a >= 0.5 else "B", logprobs={"A": math.log(p_a), "B": math.log(1 - p_a)}
                 if body.get("logprobs") else None)


@pytest.fixture
def judged(api):
    api.responder = judge
    return api


def lines(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def loop_config(tmp_path: Path, model: Path, **loop) -> Path:
    (tmp_path / "train.yaml").write_text("max_steps: 2\nbatch_size: 2\nmax_length: 64\nlearning_rate: 0.001\n"
                                         "logging_steps: 1\n")
    cfg = {
        "name": "loop-test", "constitution": str(ROOT / "constitutions" / "harmless.yaml"),
        "prompts_dir": str(ROOT / "prompts"), "model": f"local:{model}", "seed": 0, "concurrency": 8,
        "stages": {
            "questions": {"seeds": [str(lines(tmp_path / "train.jsonl", TRAIN))], "include_seeds": True, "generate": 0},
            "answer": {"candidates": 2, "temperature": 0.9, "max_tokens": 8},
            "critique_revise": None,
            "judge": {"model": "openai:m", "compare": "initial", "method": "choice"},
            "export": {"test_fraction": 0.0, "clean": {"drop_truncated": False}},
        },
        "loop": {"held_out": str(lines(tmp_path / "held.jsonl", HELD)), "eval_judge": "openai:m",
                 "train_config": "train.yaml", **loop},
    }
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def datasets(out: Path, rounds: int) -> list[bytes]:
    """Every round's exported training rows, as bytes."""
    return [b"".join(p.read_bytes() for p in sorted((out / f"round-{k}" / "run" / "data").rglob("*.parquet")))
            for k in range(1, rounds + 1)]


@pytest.mark.slow
@pytest.mark.train
def test_two_rounds_make_folders_manifest_table_and_report(judged, tiny: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "loop"
    r = factory("loop", loop_config(tmp_path, tiny, mix=0.5), "--rounds", "2", "--out", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == str(out)
    manifest = json.loads((out / "loop.json").read_text())
    assert manifest["status"] == "complete" and manifest["wall_seconds"] > 0
    assert list(manifest["steps"]) == ["1.generate", "1.train", "1.eval", "2.generate", "2.mix", "2.train",
                                       "2.eval", "2.eval_prev"]
    assert all(s["status"] == "done" for s in manifest["steps"].values())
    for k in (1, 2):
        for part in ("run/manifest.json", "train/train_meta.json", "eval/eval.json"):
            assert (out / f"round-{k}" / part).is_file(), (k, part)
    # round 2 answered with round 1's policy, and trained from it
    run2 = json.loads((out / "round-2" / "run" / "manifest.json").read_text())
    assert str(out / "round-1" / "train") in run2["config"]["model"]
    meta2 = json.loads((out / "round-2" / "train" / "train_meta.json").read_text())
    assert meta2["base_model"]["path"] == str((out / "round-1" / "train").resolve())
    rows1 = json.loads((out / "round-1" / "train" / "train_meta.json").read_text())["data"]["rows"]["train"]
    added, own = map(int, re.search(r"mixed (\d+) earlier row\(s\) into (\d+)", r.stderr).groups())
    assert added == round(0.5 * rows1) > 0 and meta2["data"]["rows"]["train"] == own + added
    prev = json.loads((out / "round-2" / "eval_prev" / "eval.json").read_text())
    assert prev["model"].endswith("round-2/train") and prev["baseline"].endswith("round-1/train")
    assert prev["prompts"] == len(HELD) and len(prev["ci95"]) == 2
    shown = factory("inspect", out)
    assert shown.returncode == 0 and "win vs round 0" in shown.stdout and "position" in shown.stdout
    html = (out / "report.html").read_text()
    assert html.count("<tr><td>") >= 2 and "<svg" in html and "win rate vs previous" in html


@pytest.mark.slow
@pytest.mark.train
def test_sigkill_mid_loop_then_resume_reaches_the_same_datasets(judged, tiny: Path, tmp_path: Path) -> None:  # noqa: F811
    """Killed inside a generate, a train and an eval step in turn (one uninterrupted loop as the reference
    for all three), each resumed run ends with the same datasets, the same win rates, and each judge call
    made once."""
    config = loop_config(tmp_path, tiny)
    whole = tmp_path / "whole"
    assert factory("loop", config, "--rounds", "2", "--out", whole).returncode == 0
    for phase in ("2.generate", "1.train", "1.eval"):
        judged.requests.clear()
        out = tmp_path / f"killed-{phase}"
        proc = subprocess.Popen([sys.executable, "-m", "factory", "loop", config, "--rounds", "2", "--out", out],
                                cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:  # kill it inside that step
            steps = json.loads((out / "loop.json").read_text())["steps"] if (out / "loop.json").is_file() else {}
            if steps.get(phase, {}).get("status") == "running":
                time.sleep(1.0 if phase == "1.train" else 0)  # into the training itself
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert json.loads((out / "loop.json").read_text())["steps"][phase]["status"] == "running", phase
        r = factory("loop", "--resume", out)
        assert r.returncode == 0, (phase, r.stderr)
        assert json.loads((out / "loop.json").read_text())["resumed"] == 1
        assert datasets(out, 2) == datasets(whole, 2), phase
        for k, name in ((1, "eval"), (2, "eval"), (2, "eval_prev")):
            a, b = (json.loads((d / f"round-{k}" / name / "eval.json").read_text()) for d in (out, whole))
            assert (a["win_rate"], a["ci95"], a["n"]) == (b["win_rate"], b["ci95"], b["n"]), (phase, k, name)
        with sqlite3.connect(out / "cache" / "calls.sqlite") as db:
            distinct = db.execute("SELECT COUNT(*) FROM calls WHERE model = 'openai:m'").fetchone()[0]
        asked = [r for r in judged.requests if r["path"].endswith("/chat/completions")]
        # Every judge call was made once across the killed and the resumed process (a call in flight at
        # the kill, at most `concurrency` of them, may have been made twice).
        assert distinct > 0 and distinct <= len(asked) <= distinct + 8, phase


def test_bad_input_exits_2_naming_file_line_and_field(tmp_path: Path) -> None:
    config = loop_config(tmp_path, tmp_path / "no-model-here")  # nothing loads it
    r = factory("loop", config, "--rounds", "0", "--out", tmp_path / "a")
    assert r.returncode == 2 and "--rounds" in r.stderr and "at least 1" in r.stderr and "Traceback" not in r.stderr

    data = yaml.safe_load(config.read_text())
    data["loop"]["objective"] = "kto"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    r = factory("loop", config, "--rounds", "1", "--out", tmp_path / "b")
    line = config.read_text().splitlines().index("  objective: kto") + 1
    assert r.returncode == 2 and f"{config}:{line}: field 'loop.objective'" in r.stderr and "kto" in r.stderr

    data["loop"]["objective"] = "dpo"
    data["loop"]["colour"] = "red"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    r = factory("loop", config, "--rounds", "1", "--out", tmp_path / "c")
    assert r.returncode == 2 and "field 'loop.colour'" in r.stderr and "unknown key" in r.stderr

    del data["loop"]["colour"]
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    lines(tmp_path / "held.jsonl", [*HELD[:2], TRAIN[3].upper()])
    r = factory("loop", config, "--rounds", "1", "--out", tmp_path / "d")
    assert r.returncode == 2 and f"{tmp_path / 'held.jsonl'}:3: field 'prompt'" in r.stderr
    assert f"{tmp_path / 'train.jsonl'}:4" in r.stderr
    assert not any((tmp_path / x).exists() for x in "abcd")  # nothing written, no model loaded


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "pipelines").glob("*.yaml")
                                        if "loop" in read_layers(p)[1]))
def test_every_shipped_loop_config_passes_the_loops_checks(name: str) -> None:
    """Types, the training file, and no held-out prompt among the seeds (the helpful seeds once held one):
    load_loop raises an InputError on any of them."""
    load_loop(ROOT / "pipelines" / name, 3)


def test_a_loop_config_that_extends_another_is_recorded_whole_and_resumes_only_unchanged(tmp_path: Path) -> None:
    """Its error lines are the base file's where the base sets the field; loop.json's digest covers both
    files, so resuming after the base changed is refused; config.yaml holds both merged."""
    from factory.loop.steps import _record, config_digest

    base = loop_config(tmp_path, tmp_path / "no-model-here")
    child = tmp_path / "child.yaml"
    child.write_text("extends: loop.yaml\nloop:\n  mix: 0.5\n")
    cfg = load_loop(child, 2)
    assert cfg.loop.mix == 0.5 and cfg.loop.eval_judge == "openai:m"
    err = cfg.error("loop.eval_judge", "x")
    assert err.path == str(base) and err.line == base.read_text().splitlines().index("  eval_judge: openai:m") + 1
    out = tmp_path / "out"
    out.mkdir()
    _record(child, out / "config.yaml")
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["loop"]["mix"] == 0.5 and recorded["name"] == "loop-test" and "extends" not in recorded
    (out / "loop.json").write_text(json.dumps({"config": str(child), "config_sha256": config_digest(child),
                                               "rounds": 2, "steps": {}}))
    base.write_text(base.read_text().replace("concurrency: 8", "concurrency: 9"))
    r = factory("loop", "--resume", out)
    assert r.returncode == 2 and f"{child} changed (or is gone) since the loop started" in r.stderr


@pytest.mark.slow
@pytest.mark.train
def test_a_budget_stop_exits_3_and_continues_with_a_larger_budget(judged, tiny: Path, tmp_path: Path) -> None:  # noqa: F811
    config = loop_config(tmp_path, tiny)
    data = yaml.safe_load(config.read_text())
    data["stages"]["judge"]["model"] = data["loop"]["eval_judge"] = "openai:gpt-4o-mini"  # priced in prices.yaml
    data["max_cost"] = 1e-6  # less than one judge call
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "loop"
    r = factory("loop", config, "--rounds", "1", "--out", out)
    assert r.returncode == 3, r.stderr
    assert f"factory loop --resume {out} --max-cost USD" in r.stderr and "Traceback" not in r.stderr
    manifest = json.loads((out / "loop.json").read_text())
    assert manifest["status"] == "stopped_at_budget" and manifest["steps"]["1.generate"]["status"] == "running"

    from factory.engine.state import lock_run_dir

    held = lock_run_dir(out)  # another process working on the loop: a second one is refused
    r = factory("loop", "--resume", out, "--max-cost", "1")
    held.close()
    assert r.returncode == 2 and "in use by another factory process" in r.stderr

    r = factory("loop", "--resume", out, "--max-cost", "1")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "loop.json").read_text())["status"] == "complete"


@pytest.mark.slow
@pytest.mark.train
def test_self_rewarding_the_policy_judges_its_own_answers(judged, tiny: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "self"
    r = factory("loop", loop_config(tmp_path, tiny, judge="self", start_from="base"), "--rounds", "2", "--out", out)
    assert r.returncode == 0, r.stderr
    for k, policy in ((1, f"local:{tiny}"), (2, f"local:{(out / 'round-1' / 'train').resolve()}")):
        cfg = json.loads((out / f"round-{k}" / "run" / "manifest.json").read_text())["config"]
        assert cfg["model"] == policy and cfg["stages"]["judge"]["model"] is None  # the judge is the policy
    with sqlite3.connect(out / "round-2" / "run" / "calls.sqlite") as db:
        stages = dict(db.execute("SELECT stage, model FROM calls GROUP BY stage").fetchall())
    assert stages["judge"] == stages["answer"] == f"local:{(out / 'round-1' / 'train').resolve()}"
    # start_from base: round 2 trained from the base model, on round 2's data
    meta = json.loads((out / "round-2" / "train" / "train_meta.json").read_text())
    assert meta["base_model"]["spec"] == f"local:{tiny}"


@pytest.mark.slow
@pytest.mark.train
def test_an_online_objective_trains_on_the_rounds_prompts(judged, tiny: Path, tmp_path: Path) -> None:  # noqa: F811
    from test_rl import FAST

    config = loop_config(tmp_path, tiny, objective="rloo")
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({**FAST, "max_steps": 2, "rewards": [
        {"kind": "teacher", "scorer": "vader:negative", "everywhere": True}]}))
    out = tmp_path / "rl"
    r = factory("loop", config, "--rounds", "1", "--out", out)
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "round-1" / "train" / "train_meta.json").read_text())
    assert meta["objective"] == "rloo" and meta["metrics"]["steps"] == 2
    assert (out / "round-1" / "eval" / "eval.json").is_file()
