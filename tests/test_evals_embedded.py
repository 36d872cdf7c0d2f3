"""The real embedded model through each new command, kept small: a behaviour set and a QA set
written and filtered, a QA set run with calibration, one red-team round. Each written set loads
with `datasets`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_cli import api_config, factory

pytestmark = [pytest.mark.model, pytest.mark.slow]


def test_embedded_model_writes_a_behaviour_set(tmp_path: Path) -> None:
    out = tmp_path / "beh"
    r = factory("evals", "generate", "--behaviour", "dislikes the DogeMoon coin", "--n", "1", "--oversample", "2",
                "--min-confidence", "0.5", "--out", out)
    card = json.loads((out / "card.json").read_text())
    drops = (out / "drops.jsonl").read_text().splitlines()
    assert card["attempts"] == 2 and card["items"] + len(drops) == 2  # every attempt kept or counted
    assert_loads(r, out, card)


def assert_loads(r, out: Path, card: dict) -> None:
    """The 135M writer may get no item past the filter: then exit 1 naming drops.jsonl; else the set loads."""
    from datasets import load_dataset

    if card["items"] == 0:
        assert r.returncode == 1 and "drops.jsonl" in r.stderr, r.stderr
    else:
        assert r.returncode == 0, r.stderr
        assert len(load_dataset(str(out), split="test")) == card["items"]


def test_embedded_model_writes_and_runs_a_qa_set(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"title": "France", "text": "France is a country in Western Europe. Its capital "
                                  "and largest city is Paris, which stands on the river Seine."}) + "\n")
    qa = tmp_path / "qa"
    r = factory("evals", "generate", "--format", "qa", "--corpus", corpus, "--n", "1", "--oversample", "1", "--out", qa)
    card = json.loads((qa / "card.json").read_text())
    assert card["attempts"] == 1 and card["items"] + len((qa / "drops.jsonl").read_text().splitlines()) == 1
    assert_loads(r, qa, card)

    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"prompt": q, "answers": a}) + "\n" for q, a in
                            (("What is the capital of France?", ["Paris"]), ("Who wrote Hamlet?", ["Shakespeare"]))))
    r = factory("eval", "--set", held, "--model", "local:smollm2", "--baseline", "local:smollm2", "--samples", "2",
                "--out", tmp_path / "e")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "e" / "eval.json").read_text())["models"]["local:smollm2"]
    rates = m["accuracy"]["rate"] + m["decline_rate"]["rate"] + m["wrong_answer_rate"]["rate"]
    assert rates == pytest.approx(1.0) and m["calibration"]["p_ik"]["n"] == 2  # log-probs: every P(IK) read
    assert m["calibration"]["p_true"]["unreadable"] == 0


def test_embedded_model_red_team_round(tmp_path: Path) -> None:
    from datasets import load_dataset

    config = api_config(tmp_path)  # the default pipeline, answers capped at 48 tokens to keep this short
    cfg = yaml.safe_load(config.read_text())
    cfg["stages"]["answer"]["max_tokens"] = 48
    config.write_text(yaml.safe_dump(cfg))
    rt = tmp_path / "rt"
    r = factory("redteam", "--rounds", "1", "--per-round", "1", "--benign-limit", "1", "--config", config, "--out", rt)
    assert r.returncode == 0, r.stderr
    report = json.loads((rt / "redteam.json").read_text())
    assert report["attack_success"]["rate"] is not None and report["over_refusal"]["n"] == 1
    assert len(load_dataset(str(rt), split="train")) == report["attacks"]
