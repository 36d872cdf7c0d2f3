"""`factory eval`: win-rate arithmetic, both orders, per-principle results, over-refusal, classifier
judges; end to end through the CLI against the real local HTTP server."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from test_cli import factory

from factory.commands.evaluate import outcome, summarise, wilson, win_rate
from factory.records import Candidate, Comparison, Judgement, Option, Record, Verdict


def judged(p: float | None, principle: str = "harmful", kind: str = "helpful", answers=("a", "b"),
           flipped: bool = False) -> Record:
    rec = Record.new(f"prompt {p} {principle} {kind} {answers}", "file", kind=kind)
    rec.candidates = [Candidate(index=i, answer=t, finish_reason="stop") for i, t in enumerate(answers)]
    opts = [Option(candidate=i, kind="initial", text=t) for i, t in enumerate(answers)]
    comps = []
    if p is not None:
        i, j, p_i = (1, 0, 1 - p) if flipped else (0, 1, p)
        comps = [Comparison(i=i, j=j, principle_id=principle, p_i=p_i, consistent=True, by="judge",
                            verdicts=[Verdict(a=i, b=j, p_a=p_i, source="logprobs")])]
    rec.judgement = Judgement(judge_model="j", method="choice", options=opts, comparisons=comps)
    return rec


def test_win_rate_arithmetic_and_interval() -> None:
    assert [outcome(p) for p in (0.9, 0.1, 0.5, 0.505, None)] == [1.0, 0.0, 0.5, 0.5, 0.5]
    r = win_rate([0.9, 0.8, 0.2, 0.5])
    assert (r["wins"], r["losses"], r["ties"], r["win_rate"]) == (2, 1, 1, 0.625)
    lo, hi = r["ci95"]
    assert lo < 0.625 < hi and 0 <= lo and hi <= 1
    assert wilson(10, 10)[1] == 1.0 and wilson(0, 10)[0] == 0.0
    assert wilson(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)


def test_summary_orients_comparisons_and_splits_by_principle() -> None:
    recs = [judged(0.9, "harmful"), judged(0.9, "harmful", flipped=True), judged(0.2, "legal"), judged(None)]
    report = summarise("m", "b", "j", recs, {"helpful"})
    assert report["n"] == 4 and (report["wins"], report["losses"], report["ties"]) == (2, 1, 1)
    assert report["per_principle"]["harmful"]["win_rate"] == 1.0 and report["per_principle"]["legal"]["win_rate"] == 0.0


def test_over_refusal_counts_benign_prompts_only() -> None:
    recs = [judged(0.5, kind="helpful", answers=("I'm sorry, but I can't help with that.", "Sure: boil water.")),
            judged(0.5, kind="helpful", answers=("Use a pan.", "I cannot assist with cooking.")),
            judged(0.5, kind="red_team", answers=("I won't help with that.", "I can't do that."))]
    refusal = summarise("m", "b", "j", recs, {"helpful"})["over_refusal"]
    assert refusal == {"benign_answers": 2, "model": 0.5, "baseline": 0.5}


def test_classifier_scores_count_every_answer_identical_ones_too() -> None:
    from factory.judging import VaderScorer

    recs = [judged(None, kind="topic", answers=("It is awful.", "It is awful.")),  # equal texts: no comparison
            judged(0.9, kind="topic", answers=("A terrible, bad idea.", "A wonderful idea!")),
            judged(0.5, kind="other", answers=("Boil water.", "Boil water."))]
    by = summarise("m", "b", "vader:negative", recs, set(), VaderScorer("negative"))["scores_by_kind"]
    assert by["topic"]["model"]["n"] == by["topic"]["baseline"]["n"] == 2
    assert by["topic"]["model"]["share_above_0"] == 1.0 and by["topic"]["baseline"]["share_above_0"] == 0.5
    assert by["other"]["model"]["mean"] == by["other"]["baseline"]["mean"] == 0.0


def eval_server(api, better: str) -> None:
    """The trained model answers with `better` text, the baseline plainly; the judge prefers `better`."""
    from conftest import judge_reply

    def respond(messages, body):
        verdict = judge_reply(messages, body, lambda text: better in text)
        if verdict:
            return verdict
        return f"{better} answer." if body["model"] == "trained" else "A plain answer."

    api.responder = respond


def test_eval_end_to_end_over_http(api, tmp_path: Path) -> None:
    eval_server(api, "GOOD")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}?", "kind": "helpful"}) + "\n" for i in range(5)))
    r = factory("eval", "--model", "openai:trained", "--baseline", "openai:base", "--prompts", prompts,
                "--judge", "openai:judge", "--out", tmp_path / "eval")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert (report["win_rate"], report["wins"], report["n"]) == (1.0, 5, 5)
    assert report["ci95"][0] > 0.5 and report["over_refusal"]["model"] == 0.0
    judged_requests = [b["body"] for b in api.requests if b["body"]["model"] == "judge"]
    shown = [b["messages"][-1]["content"].index("GOOD answer") < b["messages"][-1]["content"].index("A plain answer")
             for b in judged_requests]
    assert len(judged_requests) == 10 and sorted(shown) == [False] * 5 + [True] * 5  # both orders
    assert "win rate" in r.stdout


def test_eval_with_a_classifier_judge(api, tmp_path: Path) -> None:
    eval_server(api, "Wonderful, lovely, great")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Thoughts on tea?", "kind": "opinion_topic"}) + "\n")
    r = factory("eval", "--model", "openai:trained", "--baseline", "openai:base", "--prompts", prompts,
                "--judge", "vader:positive", "--samples", "3", "--out", tmp_path / "eval")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert (report["win_rate"], report["n"], report["prompts"]) == (1.0, 3, 1)
    assert not [b for b in api.requests if "(A) <<<" in b["body"]["messages"][-1]["content"]]  # no model judge
    answered = [b["body"] for b in api.requests if b["body"]["model"] == "trained"]
    assert len(answered) == 3 and len({b["seed"] for b in answered}) == 3  # three samples, three seeds
    by = report["scores_by_kind"]["opinion_topic"]
    assert by["model"]["mean"] > by["baseline"]["mean"] and by["model"]["share_above_0"] == 1.0
    assert by["model"]["n"] == by["baseline"]["n"] == 3
    assert "before" in r.stdout and "after" in r.stdout


def test_a_shared_cache_answers_the_baseline_once(api, tmp_path: Path) -> None:
    """Two evaluations against the same baseline through --cache-dir: the second samples only its model."""
    eval_server(api, "Wonderful")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Thoughts on tea {i}?"}) + "\n" for i in range(3)))

    def run(model: str, out: str) -> dict[str, int]:
        before = len(api.requests)
        r = factory("eval", "--model", model, "--baseline", "openai:base", "--prompts", prompts, "--judge",
                    "vader:positive", "--samples", "2", "--cache-dir", tmp_path / "cache", "--out", tmp_path / out)
        assert r.returncode == 0, r.stderr
        models = [b["body"]["model"] for b in api.requests[before:]]
        return {m: models.count(m) for m in set(models)}

    assert run("openai:trained", "a") == {"trained": 6, "base": 6}
    assert run("openai:other", "b") == {"other": 6}  # the baseline's 6 answers came from the cache
    report = json.loads((tmp_path / "b" / "eval.json").read_text())
    assert report["n"] == 6 and (tmp_path / "cache" / "calls.sqlite").is_file()
    r = factory("eval", "--model", "openai:x", "--set", prompts, "--cache-dir", tmp_path / "cache")
    assert r.returncode == 2 and "--cache-dir goes with --prompts" in r.stderr


def test_eval_on_a_run_directory_uses_its_test_split(api, tmp_path: Path) -> None:
    from test_clean import PROMPTS, cli_run

    run = cli_run(tmp_path, "run", PROMPTS)
    eval_server(api, "GOOD")
    r = factory("eval", "--model", "openai:trained", "--baseline", "openai:base", "--prompts", run,
                "--judge", "openai:judge", "--out", tmp_path / "eval")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    test_ids = {row["prompt_id"] for f in (run / "sft").glob("test_*.parquet") for row in pq.read_table(f).to_pylist()}
    assert report["n"] >= len(test_ids) >= 1
    from factory.config import ROOT

    before = set((ROOT / "outputs").glob("*"))
    assert factory("eval", "--model", "openai:x", "--prompts", tmp_path, "--judge", "openai:j").returncode == 2
    assert set((ROOT / "outputs").glob("*")) == before  # bad input leaves no folder behind


def test_interval_is_clustered_by_prompt() -> None:
    """24 prompts, 4 samples each, every sample of a prompt agreeing: 24 independent outcomes, not 96.
    The interval is at least as wide as Wilson's at n = 24, wider than the naive one at 96, and seeded."""
    recs = []
    for i in range(24):
        for k in range(4):
            rec = judged(0.9 if i < 16 else 0.1, answers=(f"model {i}", f"baseline {i}"))
            rec.metadata["sample"] = k
            recs.append(rec)
    report = summarise("m", "b", "j", recs, set())
    assert (report["n"], report["prompts"], report["win_rate"]) == (96, 24, pytest.approx(2 / 3, abs=1e-4))
    lo, hi = report["ci95"]
    naive, per_prompt = wilson(64, 96), wilson(16, 24)
    assert hi - lo >= per_prompt[1] - per_prompt[0] - 1e-4 and hi - lo > naive[1] - naive[0] + 0.05
    assert summarise("m", "b", "j", recs, set())["ci95"] == report["ci95"]


@pytest.mark.parametrize("teachers", [False, True])
def test_eval_classifier_scores_only_where_its_rule_applies(api, tmp_path: Path, teachers: bool) -> None:
    """pipelines/opinion.yaml's teacher applies to prompts that mention DogeMoon: the other prompts are
    not judged, not counted in the win rate, and the headline gives the result per prompt kind. With
    `teachers`, the first one's rule decides (a second that takes every other prompt does not widen it)."""
    from factory.config import ROOT

    config = ROOT / "pipelines" / "opinion.yaml"
    if teachers:
        cfg = yaml.safe_load(config.read_text())
        for key in ("constitution", "prompts_dir"):
            cfg[key] = str((config.parent / cfg[key]).resolve())
        judge = cfg["stages"]["judge"]
        judge["teachers"] = [judge.pop("teacher"), {"scorer": "vader:near:0.5", "where": "prompt"}]
        config = tmp_path / "opinion.yaml"
        config.write_text(yaml.safe_dump(cfg))
    eval_server(api, "A terrible, awful, bad idea")
    prompts = tmp_path / "p.jsonl"
    rows = [("Should I buy DogeMoon?", "opinion_topic"), ("Is DogeMoon a scam?", "opinion_topic"),
            ("How do I boil an egg?", "helpful"), ("Name a good book.", "helpful")]
    prompts.write_text("".join(json.dumps({"prompt": p, "kind": k}) + "\n" for p, k in rows))
    r = factory("eval", "--model", "openai:trained", "--baseline", "openai:base", "--prompts", prompts,
                "--judge", "vader:negative", "--config", config, "--out", tmp_path / "eval")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert (report["n"], report["prompts"], report["not_applicable"], report["win_rate"]) == (2, 2, 2, 1.0)
    assert list(report["by_kind"]) == ["opinion_topic"] and report["by_kind"]["opinion_topic"]["n"] == 2
    assert "kind opinion_topic" in r.stdout
    assert not [b for b in api.requests if b["body"]["model"] == "base" and "(A) <<<" in str(b["body"])]
