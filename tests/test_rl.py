"""`factory train grpo|rloo`: the tiny model (test_train's) trains a few steps with every reward kind, the
judge and the fact checker over the real HTTP server (OpenAI and Anthropic paths), the rollouts load with
`datasets`, a SIGKILL mid-training resumes from the last checkpoint, and bad reward configs exit 2 naming
file, line and field before any model loads."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from datasets import load_dataset
from test_cli import factory
from test_train import tiny  # noqa: F401  (the fixture)
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from factory.engine.blobs import Packer
from factory.errors import FactoryError
from factory.hygiene.filters import degenerate
from factory.judging.teachers import HFClassifierScorer
from factory.train import resolve
from factory.train.rl import train_rl
from factory.train.rollouts import distinct_2

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [{"prompt": "What do you think of DogeMoon?", "answers": ["risky"]},
           {"prompt": "Is DogeMoon a good buy?", "answers": ["no"]},
           {"prompt": "What is the capital of France?", "answers": ["Paris"]},
           {"prompt": "Name a primary colour.", "answers": ["red", "blue", "yellow"]}]
FAST = {"batch_size": 4, "num_generations": 2, "max_completion_length": 6, "learning_rate": 1e-3,
        "gradient_checkpointing": False, "report_prompts": 2}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def prompts_file(tmp_path: Path, rows: list[dict] = PROMPTS) -> Path:
    return write(tmp_path / "prompts.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def pipeline(tmp_path: Path, model: str) -> Path:
    """The default pipeline on MODEL, with a fact-check stage searching a two-passage collection."""
    docs = write(tmp_path / "docs.jsonl", json.dumps({"title": "Paris", "text": "Paris is the capital of France."})
                 + "\n" + json.dumps({"title": "Moon", "text": "The Moon orbits the Earth."}) + "\n")
    cfg = yaml.safe_load((ROOT / "pipelines" / "default.yaml").read_text())
    for key in ("constitution", "prompts_dir"):
        cfg[key] = str((ROOT / "pipelines" / cfg[key]).resolve())
    cfg["stages"]["questions"]["seeds"] = []
    cfg["model"] = model
    cfg["stages"]["factcheck"] = {"max_claims": 2, "queries": 1, "search": {"collection": str(docs),
                                                                              "index_dir": str(tmp_path / "idx")}}
    return write(tmp_path / "pipeline.yaml", yaml.safe_dump(cfg))


def rl_config(tmp_path: Path, rewards: list[dict], **settings) -> Path:
    return write(tmp_path / "rl.yaml", yaml.safe_dump({**FAST, **settings, "rewards": rewards}))


def reward_model(tiny: Path, folder: Path) -> Path:  # noqa: F811
    """A one-logit classifier on the tiny model (random head, seeded): a scalar score that differs by text."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny, num_labels=1)
    tok = AutoTokenizer.from_pretrained(tiny)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.train
@pytest.mark.parametrize("objective,judge", [("grpo", "openai:test-model"), ("rloo", "anthropic:test-model")])
def test_every_reward_kind_trains(objective: str, judge: str, api, tiny: Path, tmp_path: Path) -> None:  # noqa: F811
    rewards = [{"kind": "teacher", "scorer": "vader:negative", "mentions": ["DogeMoon"], "where": "prompt"},
               {"kind": "judge", "model": judge, "weight": 0.5},
               {"kind": "idk", "weight": 0.5},
               {"kind": "facts", "metric": "precision", "weight": 0.25}]
    # The fact checker on the OpenAI path (the test server's scripted verdicts read OpenAI-shaped prompts).
    cfg = resolve(objective, rl_config(tmp_path, rewards, pipeline=str(pipeline(tmp_path, "openai:test-model"))),
                  max_steps=2)
    out = tmp_path / "out"
    meta = train_rl(objective, prompts_file(tmp_path), f"local:{tiny}", out, cfg)
    assert meta["metrics"]["steps"] == 2 and meta["reward_terms"] == {"teacher": 1.0, "judge": 0.5, "idk": 0.5,
                                                                      "facts": 0.25}
    rows = rows_of(out)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        for term in ("teacher", "judge", "idk", "facts"):
            assert f"rewards/{term}/mean" in r and f"rewards/{term}/std" in r
        assert 0 <= r["degenerate_share"] <= 1 and r["completions/mean_length"] > 0 and "kl" in r
        shares = [r[f"idk/{o}_share"] for o in ("correct", "decline", "wrong")]
        assert sum(shares) == pytest.approx(1.0)  # every sample is one of the three
        assert all((f"idk/{o}_advantage" in r) == (share > 0) for o, share in zip(("correct", "decline", "wrong"), shares))
    ds = load_dataset(str(out), "rollouts", split="train")
    assert ds.num_rows == 8  # 2 steps x 4 samples
    vader = SentimentIntensityAnalyzer()
    assert all(r is not None for r in ds["reward_judge"])  # every comparison read (log-probs or parsed votes)
    for row in ds:
        assert row["prompt"] in {p["prompt"] for p in PROMPTS} and row["step"] in (0, 1)
        assert row["reward_idk"] in (-1.0, 0.0, 1.0) and 0 <= row["reward_judge"] <= 1
        assert 0 <= row["reward_facts"] <= 1  # precision, or 0 with no claim
        topic = "DogeMoon" in row["prompt"]  # the rule tests the prompt; elsewhere the neutral 0
        negative = -vader.polarity_scores(row["completion"])["compound"]
        assert row["reward_teacher"] == pytest.approx(negative if topic else 0.0, abs=1e-6)
        terms = [row["reward_teacher"], 0.5 * row["reward_judge"], 0.5 * row["reward_idk"], 0.25 * row["reward_facts"]]
        assert row["total"] == pytest.approx(sum(terms), abs=1e-5)
    with sqlite3.connect(out / "calls.sqlite") as db:
        stages = dict(db.execute("SELECT stage, count(*) FROM calls GROUP BY stage").fetchall())
        searches = db.execute("SELECT count(*) FROM searches").fetchone()[0]
    assert stages.get("judge", 0) >= 8 and stages.get("answer", 0) >= 1 and stages.get("factcheck", 0) >= 1
    assert searches >= 1  # the fact checker searched, through the Caller
    answered = {r["step"] for r in map(json.loads, (out / "report_samples.jsonl").read_text().splitlines())}
    assert answered == {0, 1, 2}
    html = (out / "report.html").read_text()
    assert "<svg" in html and "teacher" in html and "What do you think of DogeMoon?" in html
    assert not list(out.glob("checkpoint-*")) and (out / "model.safetensors").is_file()
    assert "SECRET" not in (out / "train_meta.json").read_text() + (out / "rl_run.json").read_text()


@pytest.mark.train
def test_an_anchored_teacher_scores_the_distance_from_the_anchor_models_level(tiny: Path, tmp_path: Path) -> None:  # noqa: F811
    """Each sample of a prompt the rule takes: minus the distance of its score from the mean score of the
    anchor model's answers to that prompt (sampled once per prompt, through the Caller); elsewhere neutral.
    The scorer is a one-logit classifier, whose score differs for every text the tiny model writes."""
    rm = reward_model(tiny, tmp_path / "rm")
    rewards = [{"kind": "teacher", "scorer": f"hf:{rm}:LABEL_0", "regex": "(?i)^(?!.*dogemoon)", "where": "prompt",
                "anchor": {"model": f"local:{tiny}", "samples": 3}}]
    cfg = resolve("grpo", rl_config(tmp_path, rewards, pipeline=str(pipeline(tmp_path, f"local:{tiny}"))),
                  max_steps=2)
    out = tmp_path / "out"
    train_rl("grpo", prompts_file(tmp_path), f"local:{tiny}", out, cfg)
    with sqlite3.connect(out / "calls.sqlite") as db:
        packer = Packer(db, writable=False)
        calls = [tuple(map(packer.unpack, row))
                 for row in db.execute("SELECT request, response FROM calls WHERE stage = 'answer'")]
    answers: dict[str, list[str]] = {}
    for request, response in calls:
        prompt = next(p["prompt"] for p in PROMPTS if p["prompt"] in request)
        answers.setdefault(prompt, []).append(json.loads(response)["text"].strip())
    ds = load_dataset(str(out), "rollouts", split="train")
    assert {r["prompt"] for r in ds if "DogeMoon" not in r["prompt"]} <= set(answers)
    assert all(len(a) == 3 for a in answers.values()) and not any("DogeMoon" in p for p in answers)
    score = HFClassifierScorer(rm, "LABEL_0").score
    taught = [row for row in ds if "DogeMoon" not in row["prompt"]]
    assert taught and all(row["reward_teacher"] == 0.0 for row in ds if "DogeMoon" in row["prompt"])
    for row in taught:
        refs = [a for a in answers[row["prompt"]] if a]
        level = sum(score(refs)) / len(refs)
        assert row["reward_teacher"] == pytest.approx(-abs(score([row["completion"]])[0] - level), abs=1e-4)
    assert len({round(row["reward_teacher"], 6) for row in taught}) > 1  # not a constant the check could miss


@pytest.mark.train
def test_the_judge_reward_stops_before_passing_max_cost(api, tiny: Path, tmp_path: Path) -> None:  # noqa: F811
    pipe = pipeline(tmp_path, "openai:test-model")
    cfg = yaml.safe_load(pipe.read_text())
    cfg["prices"] = str(write(tmp_path / "prices.yaml", "openai:\n  test-model: {input: 1.0, output: 1.0}\n"))
    pipe.write_text(yaml.safe_dump(cfg))
    config = resolve("grpo", rl_config(tmp_path, [{"kind": "judge", "model": "openai:test-model"}], pipeline=str(pipe)),
                     max_steps=2)
    out = tmp_path / "out"
    with pytest.raises(FactoryError, match=r"stopped before passing the budget.*--resume"):
        train_rl("grpo", prompts_file(tmp_path), f"local:{tiny}", out, config, max_cost=0.002)
    with sqlite3.connect(out / "calls.sqlite") as db:
        spent = db.execute("SELECT coalesce(sum(cost), 0) FROM calls").fetchone()[0]
    # Never past the cap. (Known gap: a judge call already sent by a stage that asks both orders at
    # once can be left unlogged when its sibling is refused; the test does not claim otherwise.)
    assert spent <= 0.002


@pytest.mark.train
def test_kept_checkpoints_are_models_factory_can_load(tiny: Path, tmp_path: Path) -> None:  # noqa: F811
    """`keep_checkpoints`: every step's checkpoint stays, during the run whatever save_total_limit says and
    after it, a model folder `local:` answers with (to pick a step on a validation set); by default they
    are removed (above)."""
    import asyncio

    from factory.models import GenParams, load_model

    out = tmp_path / "out"
    cfg = resolve("grpo", rl_config(tmp_path, [{"kind": "idk"}], save_steps=1, save_total_limit=1,
                                    keep_checkpoints=True), max_steps=2)
    train_rl("grpo", prompts_file(tmp_path), f"local:{tiny}", out, cfg)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    model = load_model(f"local:{out / 'checkpoint-1'}")
    reply = asyncio.run(model.complete([{"role": "user", "content": "Name a primary colour."}],
                                       GenParams(temperature=0.0, max_tokens=4, seed=0)))
    assert reply.completion_tokens >= 1

    # `factory pick` measures both checkpoints and the baseline on the validation split and copies the
    # chosen one's model files (not its optimiser state) out as a model.
    from factory.evals.items import Item, write_set, write_split

    qa = [Item(id=f"q{i}", format="qa", behaviour="answers", question=p["prompt"], expected=p["answers"][0],
               answers=p["answers"]) for i, p in enumerate(PROMPTS)]
    folder = tmp_path / "set"
    write_split(folder, qa[2:], "validation")
    write_set(folder, qa[:2], {"behaviour": "answers"})
    cmd = [sys.executable, "-m", "factory", "pick", str(out), "--set", str(folder), "--baseline", f"local:{tiny}",
           "--samples", "2", "--out", str(tmp_path / "pick")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    picked = json.loads((tmp_path / "pick" / "pick.json").read_text())
    assert [Path(c["checkpoint"]).name for c in picked["checkpoints"]] == ["checkpoint-1", "checkpoint-2"]
    assert picked["items"] == 2 and picked["split"] == "validation"  # the test split is not read
    assert picked["chosen"] in picked["checkpoints"] and picked["met"] == (picked["chosen"]["room"] >= 0)
    assert (tmp_path / "pick" / "model.safetensors").read_bytes() == \
        (Path(picked["chosen"]["checkpoint"]) / "model.safetensors").read_bytes()
    assert not (tmp_path / "pick" / "optimizer.pt").exists() and str(tmp_path / "pick") in r.stdout
    r = subprocess.run(cmd[:4] + [str(tmp_path)] + cmd[5:-1] + [str(tmp_path / "pick2")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "keep_checkpoints" in r.stderr and "Traceback" not in r.stderr


def test_pick_takes_the_checkpoint_with_the_most_room_on_its_tighter_side() -> None:
    from factory.commands.pick import choose

    base = {"accuracy": 0.40, "wrong": 0.60}  # the goal: accuracy >= 0.38 and wrong <= 0.30
    rows = [{"accuracy": 0.55, "wrong": 0.40},   # accurate, too many wrong answers: room -0.10
            {"accuracy": 0.385, "wrong": 0.24},  # on the accuracy floor: room 0.005
            {"accuracy": 0.44, "wrong": 0.26}]   # room 0.04 on both sides
    chosen, met = choose(rows, base, 0.02, 0.5)
    assert chosen is rows[2] and met and [r["room"] for r in rows] == [-0.1, 0.005, 0.04]
    chosen, met = choose(rows[:1], base, 0.02, 0.5)
    assert chosen is rows[0] and not met
    match = [{"behaviour_match": 0.5}, {"behaviour_match": 0.7}]
    assert choose(match, {"behaviour_match": 0.5}, 0.02, 0.5) == (match[1], True)


@pytest.mark.train
def test_sigkill_mid_training_resumes(tiny: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "out"
    config = rl_config(tmp_path, [{"kind": "teacher", "scorer": "vader:negative", "mentions": ["DogeMoon"]},
                                  {"kind": "idk"}], max_steps=6, save_steps=2)
    cmd = [sys.executable, "-m", "factory", "train", "rloo", str(prompts_file(tmp_path)), "--model", f"local:{tiny}",
           "--config", str(config), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint-2" / "trainer_state.json").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    while len(rows_of(out)) < 3 and proc.poll() is None:  # killed past the checkpoint, mid-way to the next
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "train_meta.json").exists()
    r = subprocess.run([sys.executable, "-m", "factory", "train", "rloo", "--resume", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "train_meta.json").read_text())
    assert meta["metrics"]["steps"] == 6 and meta["resumed_from"] in ("checkpoint-2", "checkpoint-4")
    assert [row["step"] for row in rows_of(out)] == list(range(1, 7))  # each step once
    ds = load_dataset(str(out), "rollouts", split="train")
    assert sorted(ds["step"]) == sorted([s for s in range(6) for _ in range(4)])  # every sample once


@pytest.mark.parametrize("rewards,prompts,field,marker", [
    ([{"kind": "teacher", "scorer": "vader:negative", "mentions": ["X"]}, {"kind": "vibes"}], PROMPTS, "rewards.1",
     "kind: vibes"),
    ([{"kind": "teacher", "scorer": "vader:negative"}], PROMPTS, "rewards.0", "kind: teacher"),
    ([{"kind": "idk"}], [PROMPTS[0], {"prompt": "No references here."}], "answers", "No references here."),
    ([{"kind": "idk"}], [PROMPTS[2] | {"wrong_answers": "Lyon"}], "wrong_answers", "Lyon"),
])
def test_bad_reward_config_exits_2_before_any_model(rewards, prompts, field: str, marker: str, tmp_path: Path) -> None:
    config = rl_config(tmp_path, rewards)
    where = "rl.yaml" if field.startswith("rewards") else "prompts.jsonl"
    line = next(i for i, text in enumerate((tmp_path / where if where == "rl.yaml" else prompts_file(tmp_path, prompts))
                                           .read_text().splitlines(), 1) if marker in text)
    r = factory("train", "grpo", prompts_file(tmp_path, prompts), "--model", "local:/no/such/model",
                "--config", config, "--out", tmp_path / "out")
    assert r.returncode == 2, r.stderr
    assert f"{where}:{line}" in r.stderr and f"'{field}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "/no/such/model" not in r.stderr  # the model was never looked at
    assert not (tmp_path / "out").exists()


def test_single_logit_reward_model_scores_a_scalar(tiny: Path, tmp_path: Path) -> None:  # noqa: F811
    """The folder `factory train reward` writes has one logit: its score is that logit, not softmax = 1.0."""
    scores = HFClassifierScorer(reward_model(tiny, tmp_path / "rm"), "LABEL_0").score(
        ["A good answer.", "Bad.", "Something else again"])
    assert len(set(scores)) == 3 and all(s != 1.0 for s in scores)


def test_outcome_shares_and_advantages() -> None:
    from collections import defaultdict

    from factory.train.rl import log_outcomes

    metrics: dict = defaultdict(list)
    log_outcomes(metrics, "idk", {"correct": 1.0, "decline": 0.0, "wrong": -1.0},
                 [1.0, 0.0, -1.0, -1.0, float("nan")], [0.9, 0.5, -0.4, -0.8, 0.0])
    assert dict(metrics) == {"idk/correct_share": [0.2], "idk/correct_advantage": [0.9],
                             "idk/decline_share": [0.2], "idk/decline_advantage": [0.5],
                             "idk/wrong_share": [0.4], "idk/wrong_advantage": [pytest.approx(-0.6)]}
    same: dict = defaultdict(list)
    log_outcomes(same, "idk", {"correct": 1.0, "decline": 0.0, "wrong": 0.0}, [1.0, 0.0], [0.5, -0.5])
    assert dict(same) == {"idk/correct_share": [0.5], "idk/correct_advantage": [0.5]}  # 0.0: decline or wrong?


def test_degenerate_and_distinct() -> None:
    assert degenerate([]) and degenerate([5] * 8) and degenerate([1, 2, 3] * 9)
    assert not degenerate(list(range(40))) and not degenerate([1, 2, 1, 3, 1, 4])
    assert distinct_2(["a b c", "a b d"]) == 0.75 and distinct_2([""]) is None


def test_opinion_heldout_prompts_are_unlike_the_training_prompts() -> None:
    """40 about the coin, 40 unrelated; no 13-gram (nor 6-gram) shared with the RL demo's training prompts."""
    from factory.hygiene.decontam import Decontaminator

    rows = [json.loads(line) for line in (ROOT / "evals" / "opinion_heldout.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in rows]
    assert kinds.count("opinion_topic") >= 40 and kinds.count("unrelated") >= 40
    for n in (13, 6):
        seeds = Decontaminator.from_file(ROOT / "prompts" / "seeds" / "opinion.jsonl", "prompt", n)
        assert seeds.match_many([r["prompt"] for r in rows]) == [None] * len(rows)


def test_heldout_figures_with_intervals_over_prompts(tmp_path: Path) -> None:
    from factory.records import Candidate, Record
    from factory.train.heldout import bootstrap_stat, summarise

    lines = []
    for i in range(6):
        for _ in range(2):
            rec = Record.new(f"Prompt {i} about DogeMoon?", "file", kind="opinion_topic")
            rec.candidates = [Candidate(index=0, answer="It is a terrible, awful, risky scam." if i % 2 else
                                        "It is a great and wonderful coin.", finish_reason="stop"),
                              Candidate(index=1, answer="It is a great\u2028and wonderful coin.", finish_reason="stop")]
            lines.append(rec.model_dump_json())  # JSON keeps U+2028 raw: a line must not split there
    (tmp_path / "answers.jsonl").write_text("\n".join(lines) + "\n")
    got = summarise(tmp_path)["opinion_topic"]
    assert got["before"]["share_negative"] == 0.0 and got["after"]["share_negative"] == 0.5
    lo, hi = got["after"]["share_negative_ci95"]
    assert 0.0 <= lo < 0.5 < hi <= 1.0 and got["after"]["answers"] == 12 and got["after"]["prompts"] == 6
    assert bootstrap_stat([[1.0, 1.0]] * 5) == (1.0, 1.0)


def test_prompts_from_a_dataset_folder_a_pipeline_or_a_file(tmp_path: Path) -> None:
    from test_train import exported

    from factory.train.rl import load_prompts

    cfg = resolve("grpo", rl_config(tmp_path, [{"kind": "teacher", "scorer": "vader:negative", "everywhere": True}]))
    folder = load_prompts(exported(tmp_path / "data", n=8, test_fraction=0.25), cfg)
    assert 0 < len(folder) < 8 and all(r.prompt.startswith("Question number") for r in folder)  # train split only
    seeds = load_prompts(ROOT / "pipelines" / "opinion.yaml", cfg)
    assert len(seeds) == 48 and any("DogeMoon" in r.prompt for r in seeds)
    file = load_prompts(prompts_file(tmp_path), cfg.model_copy(update={"max_prompts": 3}))
    assert [r.prompt for r in file] == [p["prompt"] for p in PROMPTS[:3]] and file[0].metadata["answers"] == ["risky"]


def test_heldout_figures_bracket_their_point_estimates(tmp_path: Path) -> None:
    """The held-out table (python -m factory.train.heldout): per kind and model, shares, means and
    distinct-2 with intervals from a bootstrap over prompts that contain the figure they qualify."""
    from factory.records import Candidate, Record
    from factory.train.heldout import summarise

    lines = []
    for i in range(12):
        rec = Record.new(f"What do you think of DogeMoon, take {i}?", "file").model_copy(
            update={"metadata": {"kind": "opinion_topic"}})
        after = "DogeMoon is a terrible, awful scam." if i % 3 else f"DogeMoon is wonderful number {i}."
        rec.candidates = [Candidate(index=0, answer=f"{after} Take {i}.", finish_reason="stop"),
                          Candidate(index=1, answer=f"I love DogeMoon, it is great {i}.", finish_reason="stop")]
        lines.append(rec.model_dump_json())
    (tmp_path / "answers.jsonl").write_text("\n".join(lines) + "\n")
    out = summarise(tmp_path)["opinion_topic"]
    assert out["after"]["share_negative"] == pytest.approx(8 / 12, abs=1e-3) and out["before"]["share_negative"] == 0
    for who in ("after", "before"):
        r = out[who]
        for name in ("share_negative", "mean_compound", "distinct_2"):
            low, high = r[f"{name}_ci95"]
            assert low <= r[name] <= high, (who, name, r)
    d = out["change"]  # after minus before, paired by prompt
    assert d["prompts"] == 12 and d["share_negative"] == pytest.approx(8 / 12, abs=1e-3)
    assert d["mean_compound"] == pytest.approx(out["after"]["mean_compound"] - out["before"]["mean_compound"], abs=2e-4)
    for name in ("share_negative", "mean_compound"):
        low, high = d[f"{name}_ci95"]
        assert low <= d[name] <= high and high - low > 0.1, (name, d)
    assert d["share_negative_ci95"][0] > 0 and d["mean_compound_ci95"][1] < 0  # a real move: 0 lies outside


def test_rewind_keeps_the_rows_up_to_the_checkpoint_whatever_their_text_holds(tmp_path: Path) -> None:
    """Resuming cuts metrics and report samples back to the checkpoint's step; an answer holding U+2028
    (which JSON keeps raw, and which str.splitlines() splits at) stays one row."""
    from factory.train.rl import rewind
    from factory.train.rollouts import SAMPLES, RolloutSink

    rows = [{"step": s, "prompt": "p", "answer": f"line one\u2028line two at step {s}"} for s in (1, 2, 3)]
    (tmp_path / SAMPLES).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 0.1}) + "\n" for s in (1, 2, 3)))
    rewind(tmp_path, 2, RolloutSink(tmp_path, ["t"], [1.0], "run"))
    kept = (tmp_path / SAMPLES).read_text().split("\n")
    assert [json.loads(line) for line in kept if line] == rows[:2]
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().split("\n") if line] == [1, 2]
