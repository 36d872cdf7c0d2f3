"""Fact checking: claim, query and verdict parsing, scoring, the stage's actions, the search cache in
calls.sqlite. A fake search and a scripted model for the logic; the real server and CLI end to end,
and the real embedded model over the real default corpus in the integration test."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from pathlib import Path

import pytest
import yaml
from conftest import ScriptedModel, make_caller, run_lineage
from datasets import load_dataset
from pydantic import ValidationError
from test_cli import factory, write_prompts

from factory.config import ExportConfig, FactCheckConfig
from factory.constitution import load_constitution
from factory.engine.calllog import CallLog
from factory.engine.stats import StageStats
from factory.errors import ModelCallError, ParseError
from factory.export.rows import rows
from factory.judging.facts import parse_claims, parse_queries, parse_verdict, score
from factory.records import Candidate, Claim, FactCheck, Record, Round
from factory.search import Passage, SearchBackend
from factory.stages.factcheck import FactCheckStage, load_templates

ROOT = Path(__file__).resolve().parent.parent
HARMLESS = load_constitution(ROOT / "constitutions" / "harmless.yaml")
M = "fake:facts"
DOCS = {"Paris": "Paris is the capital and largest city of France, on the Seine.",
        "Seine": "The Seine is a river in northern France that flows through Paris.",
        "Lyon": "Lyon is the third largest city of France."}


class FakeSearch(SearchBackend):
    """Word overlap over DOCS; `fail` errors are raised first, one per search."""

    name = "fake"

    def __init__(self, fail: list[ModelCallError] | None = None):
        self.queries: list[str] = []
        self.fail = list(fail or [])

    def key(self) -> str:
        return "fake:docs-v1"

    async def search(self, query: str, k: int) -> list[Passage]:
        self.queries.append(query)
        if self.fail:
            raise self.fail.pop(0)
        words = set(re.findall(r"[a-z]{4,}", query.lower()))
        found = sorted(((len(words & set(re.findall(r"[a-z]{4,}", t.lower()))), title, t) for title, t in DOCS.items()),
                       reverse=True)
        return [Passage(title=title, text=t, source=f"https://docs.test/{title}", score=float(n))
                for n, title, t in found[:k] if n]


def facts_script(verdicts: dict[str, str] | None = None, queries: str = "Paris France capital\nSeine river Paris"):
    """Claims are the sentences of the text; verdicts by claim (default "Supported [1]")."""
    verdicts = verdicts or {}

    def script(messages, params) -> str:
        user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        if user.endswith("Claims:"):
            text = user.rsplit("Text:", 1)[1].rsplit("Claims:", 1)[0].strip()
            return "\n".join(f"{i}. {s}" for i, s in enumerate(re.split(r"(?<=\.)\s+", text), 1))
        if user.endswith("Queries:"):
            return queries
        if user.endswith("Verdict:"):
            claim = user.rsplit("Claim:", 1)[1].split("\n", 1)[0].strip()
            return verdicts.get(claim, "Supported [1]")
        if user.endswith("Revised response:"):
            return "Here is a revised response: Paris is the capital of France."
        raise AssertionError(f"unexpected request: {user[-60:]}")

    return script


TRUE, FALSE, OFF = ("Paris is the capital of France.", "Paris lies on the river Danube.",
                    "I really like fresh bread.")
VERDICTS = {FALSE: "Not supported [2]", OFF: "Irrelevant"}


def candidate(i: int, answer: str, final: str | None = None) -> Candidate:
    rounds = [Round(principle_id="harmful", critique="c", revision=final, noop=False)] if final else []
    return Candidate(index=i, answer=answer, finish_reason="stop", rounds=rounds)


def check(tmp_path: Path, *cands: Candidate, model: ScriptedModel | None = None, search: SearchBackend | None = None,
          log: CallLog | None = None, **cfg) -> tuple[Record, StageStats, ScriptedModel]:
    config = FactCheckConfig(**cfg)
    model = model or ScriptedModel(facts_script(VERDICTS), spec=M)
    stage = FactCheckStage(config, load_templates(ROOT / "prompts", config), M, 0, search or FakeSearch())
    rec = Record.new("Tell me about Paris.", "file")
    rec.candidates = list(cands)
    own = log is None
    log = log or CallLog(tmp_path / f"calls-{len(list(tmp_path.iterdir()))}.sqlite")
    caller = make_caller({M: model}, log)
    asyncio.run(stage.process(rec, caller))
    if own:
        log.close()
    return rec, caller.stats["factcheck"], model


# --- parsing and scoring ----------------------------------------------------------------------


@pytest.mark.parametrize("text,claims", [
    ("1. Paris is in France.\n2) The Seine flows through Paris.", ["Paris is in France.", "The Seine flows through Paris."]),
    ("- Paris is in France.\n* Lyon is in France.\n\u2022 Nice is in France.",
     ["Paris is in France.", "Lyon is in France.", "Nice is in France."]),
    ("Claims:\n- \"Paris is in France.\"\n- Claim 2: Lyon is in France.\n- The claim is: Nice is in France.",
     ["Paris is in France.", "Lyon is in France.", "Nice is in France."]),
    ("Paris is in France. Lyon is big. It is old.", ["Paris is in France.", "Lyon is big.", "It is old."]),
    ("- Paris is in France.\n- Yes.\n- Paris is in France.", ["Paris is in France."]),  # fragments, repeats
    ("None.", []),
    ("No factual claims", []),
])
def test_claim_lists_parse(text: str, claims: list[str]) -> None:
    assert parse_claims(text, 10) == claims


def test_claim_lists_that_do_not_parse_and_the_limit() -> None:
    for bad in ("", "  \n ", "- Yes.\n- Ok."):
        with pytest.raises(ParseError):
            parse_claims(bad, 5)
    assert len(parse_claims("\n".join(f"- Fact number {i} is here." for i in range(9)), 4)) == 4


@pytest.mark.parametrize("text,expected", [
    ("Supported [1]", ("supported", [1])),
    ("Verdict: Not supported [2, 3]", ("not_supported", [2, 3])),
    ("NOT_SUPPORTED", ("not_supported", [])),
    ("unsupported; passage 9 is unrelated", ("not_supported", [])),  # 9 is not a passage
    ("irrelevant.", ("irrelevant", [])),
    ("The claim is supported by passages 1 and 2. Not supported elsewhere.", ("supported", [1, 2])),
])
def test_verdicts_parse(text: str, expected: tuple) -> None:
    assert parse_verdict(text, 3) == expected


def test_a_verdict_without_a_label_does_not_parse() -> None:
    with pytest.raises(ParseError):
        parse_verdict("Paris is lovely.", 3)


def test_queries_parse() -> None:
    assert parse_queries('1. capital of France\n2. "Paris population"\nQuery 3: Seine river\nParis', 2) == [
        "capital of France", "Paris population"]
    assert parse_queries("", 3) == []


def facts(*verdicts: str | None) -> FactCheck:
    return FactCheck(candidate=0, kind="final", text="t", claims=[Claim(text=f"c{i}", verdict=v) for i, v in
                                                                 enumerate(verdicts)])


@pytest.mark.parametrize("verdicts,k,p,r,f1", [
    ((), 5, None, 0.0, 0.0),  # no claims
    (("not_supported", "irrelevant"), 5, 0.0, 0.0, 0.0),
    (("irrelevant", None), 5, None, 0.0, 0.0),  # irrelevant and unreadable count in neither S nor N
    (("supported",) * 3 + ("not_supported",), 5, 0.75, 0.6, 2 * 0.75 * 0.6 / 1.35),
    (("supported",) * 5, 5, 1.0, 1.0, 1.0),  # S = K: recall saturates
    (("supported",) * 7 + ("not_supported", "irrelevant"), 5, 0.875, 1.0, 2 * 0.875 / 1.875),  # S > K
    (("supported",), 1, 1.0, 1.0, 1.0),
])
def test_scores_at_the_boundaries(verdicts, k, p, r, f1) -> None:
    c = score(facts(*verdicts), k)
    assert (c.precision, c.recall) == (pytest.approx(p) if p is not None else None, pytest.approx(r))
    assert c.f1 == pytest.approx(f1, abs=1e-6)
    assert c.irrelevant == verdicts.count("irrelevant")


# --- the stage ---------------------------------------------------------------------------------


def test_claims_are_searched_judged_and_scored(tmp_path: Path) -> None:
    search = FakeSearch()
    rec, st, _ = check(tmp_path, candidate(0, f"{TRUE} {FALSE} {OFF}"), search=search, f1_k=2)
    (c,) = rec.facts.checks
    assert [(cl.text, cl.verdict) for cl in c.claims] == [(TRUE, "supported"), (FALSE, "not_supported"),
                                                          (OFF, "irrelevant")]
    assert (c.supported, c.not_supported, c.irrelevant, c.precision, c.recall) == (1, 1, 1, 0.5, 0.5)
    assert c.f1 == pytest.approx(0.5)
    true = c.claims[0]
    assert true.queries == [TRUE, "Paris France capital", "Seine river Paris"]  # the claim, then Q-1 written
    assert [e.n for e in true.evidence] == list(range(1, len(true.evidence) + 1))
    assert len({e.source for e in true.evidence}) == len(true.evidence)  # deduplicated by source
    assert [e.cited for e in true.evidence][:1] == [True] and not any(e.cited for e in true.evidence[1:])
    assert c.claims[1].evidence[1].cited and c.claims[1].reply == "Not supported [2]"
    assert st.counters["claims"] == 3 and st.counters["searches"] == 9 and st.counters["verdict:irrelevant"] == 1
    assert [r.purpose for r in rec.calls if r.template == "claims"] == ["claims[0].final"]
    assert sum(r.template == "claim_verdict" for r in rec.calls) == 3


def test_unreadable_claims_and_verdicts_are_counted_not_fatal(tmp_path: Path) -> None:
    script = facts_script({TRUE: "It is hard to say."})
    rec, st, _ = check(tmp_path, candidate(0, TRUE), model=ScriptedModel(script, spec=M), queries=1)
    assert rec.facts.checks[0].claims[0].verdict is None and st.counters["verdict:unparseable"] == 1
    assert rec.facts.checks[0].precision is None and not rec.dropped
    rec, st, _ = check(tmp_path, candidate(0, TRUE), model=ScriptedModel(lambda m, p: "", spec=M))
    assert rec.facts.checks[0].claims == [] and st.counters["claims_unparseable"] == 1


def test_queries_fall_back_to_the_claim(tmp_path: Path) -> None:
    model = ScriptedModel(facts_script(VERDICTS, queries="ok"), spec=M)
    rec, st, _ = check(tmp_path, candidate(0, TRUE), model=model, claim_as_query=False, queries=2)
    assert rec.facts.checks[0].claims[0].queries == [TRUE] and st.counters["queries_fell_back_to_claim"] == 1


def test_target_both_checks_initial_and_final_once_each(tmp_path: Path) -> None:
    rec, _, _ = check(tmp_path, candidate(0, FALSE, final=TRUE), candidate(1, TRUE, final=TRUE), target="both")
    assert [(c.candidate, c.kind) for c in rec.facts.checks] == [(0, "initial"), (0, "final"), (1, "final")]


def test_drop_below_removes_answers_then_the_record(tmp_path: Path) -> None:
    rec, st, _ = check(tmp_path, candidate(0, TRUE), candidate(1, FALSE), drop_below=0.5, metric="precision")
    assert [c.index for c in rec.candidates] == [0] and not rec.dropped
    assert st.counters["candidate_below_threshold"] == 1
    rec, _, _ = check(tmp_path, candidate(0, f"{TRUE} {FALSE}"), drop_below=0.6, f1_k=1)  # F1 = 2/3 passes
    assert not rec.dropped
    rec, _, _ = check(tmp_path, candidate(0, f"{TRUE} {FALSE}"), drop_below=0.7, f1_k=1)
    assert (rec.dropped.stage, rec.dropped.reason) == ("factcheck", "fact_score_below_threshold")
    assert "f1" in rec.dropped.detail and "0.7" in rec.dropped.detail


def test_revise_adds_a_fact_check_round_and_recheck_scores_it(tmp_path: Path) -> None:
    rec, st, _ = check(tmp_path, candidate(0, f"{TRUE} {FALSE}"), revise=True, recheck=True, drop_below=0.9, f1_k=1)
    (cand,) = rec.candidates
    (rnd,) = cand.rounds
    assert rnd.principle_id == "fact-check" and rnd.critique == f"- {FALSE}" and not rnd.noop
    assert cand.final == TRUE
    assert [c.kind for c in rec.facts.checks] == ["final", "revised"]
    assert rec.facts.checks[-1].f1 == 1.0 and not rec.dropped  # the rechecked text passes
    assert st.counters["fact_revision"] == 1
    assert any(r.template == "fact_revision" for r in rec.calls)
    with pytest.raises(ValidationError, match="revise needs target"):
        FactCheckConfig(revise=True, target="initial")
    with pytest.raises(ValidationError, match="set revise"):
        FactCheckConfig(recheck=True)


def test_prefer_makes_the_better_supported_answer_chosen(tmp_path: Path) -> None:
    better, worse = f"{TRUE} The Seine flows through Paris.", f"{TRUE} {FALSE}"
    rec, _, _ = check(tmp_path, candidate(0, worse), candidate(1, better), prefer=True)
    (pair,) = rec.facts.pairs
    assert rec.facts.checks[pair.chosen].text == better and rec.facts.checks[pair.rejected].text == worse
    assert pair.score_chosen > pair.score_rejected
    st = StageStats()
    out = list(rows(rec, HARMLESS, "gen", ExportConfig(reward=True), st))
    by = {name: [r for n, r in out if n == name] for name in ("sft", "prefs", "reward")}
    (sft,), (pref,), (reward,) = by["sft"], by["prefs"], by["reward"]
    assert sft["messages"][-1]["content"] == better and sft["fact_f1"] == rec.facts.checks[pair.chosen].f1
    assert (pref["chosen"][0]["content"], pref["rejected"][0]["content"]) == (better, worse)
    assert pref["fact_precision"] == 1.0 and pref["judge_model"] == "factcheck:f1" and pref.get("p_chosen") is None
    assert reward["margin"] == pytest.approx(pair.score_chosen - pair.score_rejected)
    tie, _, _ = check(tmp_path, candidate(0, TRUE), candidate(1, TRUE + " "), prefer=True)
    assert tie.facts.pairs == []
    out = list(rows(tie, HARMLESS, "gen", ExportConfig(), st := StageStats()))
    assert [n for n, _ in out] == ["sft"] and st.dropped["prefs:fact_no_pair"] == 1


def test_default_rows_carry_fact_scores(tmp_path: Path) -> None:
    rec, _, _ = check(tmp_path, candidate(0, FALSE, final=TRUE), target="both")
    (sft, pref) = [r for _, r in rows(rec, HARMLESS, "gen", ExportConfig(), StageStats())]
    assert sft["messages"][-1]["content"] == TRUE and (sft["fact_precision"], sft["fact_f1"]) == (1.0, pytest.approx(1 / 3))
    assert pref["chosen"][0]["content"] == TRUE and pref["fact_precision"] == 1.0
    plain = Record.new("p", "file")
    plain.candidates = [candidate(0, "a", final="b")]
    assert all("fact_f1" not in r for _, r in rows(plain, HARMLESS, "gen", ExportConfig(), StageStats()))


def test_dry_run_counts_the_fact_checker() -> None:
    from factory.config import load_config
    from factory.engine.estimate import estimate
    from factory.engine.pipeline import Overrides, Pipeline

    pipe = Pipeline.prepare(load_config(ROOT / "pipelines" / "factcheck.yaml"), Overrides())
    lines = {line.stage: line for line in estimate(pipe, False)}
    fc = pipe.cfg.stages.factcheck
    texts = 6 * 2  # 6 sampled seeds, first answer and revision each
    assert lines["factcheck"].calls == texts * (1 + fc.max_claims * 2)  # claims; per claim a query call and a verdict
    assert lines["factcheck"].input_tokens > lines["critique_revise"].input_tokens


# --- the search cache --------------------------------------------------------------------------


def test_searches_are_cached_in_the_call_log(tmp_path: Path) -> None:
    search, path = FakeSearch(), tmp_path / "calls.sqlite"
    first, st1, _ = check(tmp_path, candidate(0, TRUE), search=search, log=(log := CallLog(path)))
    log.close()
    n = len(search.queries)
    assert n == 3 and st1.counters["searches"] == 3 and st1.counters["cached_searches"] == 0
    with sqlite3.connect(path) as db:
        stored = db.execute("SELECT backend, query, k, results FROM searches ORDER BY query").fetchall()
    assert len(stored) == 3 and stored[0][0] == "fake:docs-v1" and stored[0][2] == 3
    assert json.loads(stored[0][3])[0]["source"].startswith("https://docs.test/")
    second, st2, _ = check(tmp_path, candidate(0, TRUE), search=search, log=(log := CallLog(path)))
    log.close()
    assert len(search.queries) == n  # nothing searched again
    assert st2.counters["cached_searches"] == st2.counters["searches"] == 3
    assert second.facts == first.facts


def test_a_failing_web_search_is_retried(tmp_path: Path) -> None:
    search = FakeSearch(fail=[ModelCallError("fake: HTTP 503", retryable=True, retry_after=0.0, status=503)])
    rec, st, _ = check(tmp_path, candidate(0, TRUE), search=search, queries=1, log=(log := CallLog(tmp_path / "c.sqlite")))
    assert st.retries == 1 and st.failed_calls == 1 and rec.facts.checks[0].claims[0].evidence
    assert log.db.execute("SELECT COUNT(*) FROM errors WHERE stage='factcheck'").fetchone()[0] == 1
    log.close()
    fatal = FakeSearch(fail=[ModelCallError("fake: HTTP 401", fatal=True, status=401)])
    with pytest.raises(ModelCallError, match="401"):
        check(tmp_path, candidate(0, TRUE), search=fatal, queries=1)


# --- end to end --------------------------------------------------------------------------------


def factcheck_config(tmp_path: Path, **factcheck) -> Path:
    """pipelines/factcheck.yaml with absolute paths, keeping truncated answers (a 135M model's often are)."""
    cfg = yaml.safe_load((ROOT / "pipelines" / "factcheck.yaml").read_text())
    for key in ("constitution", "prompts_dir"):
        cfg[key] = str((ROOT / "pipelines" / cfg[key]).resolve())
    cfg["stages"]["questions"]["seeds"] = [str(ROOT / "prompts" / "seeds" / "factual.jsonl")]
    cfg["stages"]["factcheck"] |= factcheck
    cfg["stages"]["export"]["clean"] = {"drop_truncated": False}
    path = tmp_path / "factcheck.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_factcheck_pipeline_over_http(api, tmp_path: Path) -> None:
    out, prompts = tmp_path / "run", write_prompts(tmp_path / "p.jsonl", ["What is the capital of France?",
                                                                          "Tell me about the Seine."])
    r = factory("run", factcheck_config(tmp_path), "--model", "openai:test-model", "--prompts", prompts, "--out", out,
                "--cache-dir", tmp_path / "shared")
    assert r.returncode == 0, r.stderr
    sft, prefs = load_dataset(str(out), "sft"), load_dataset(str(out), "prefs")
    sft_rows = [row for split in sft.values() for row in split]
    pref_rows = [row for split in prefs.values() for row in split]
    assert len(sft_rows) == 2 and len(pref_rows) == 2
    assert all(row["fact_f1"] is not None and 0 <= row["fact_precision"] <= 1 for row in sft_rows)
    assert all(row["chosen"][0]["content"].startswith("A careful") for row in pref_rows)  # the better supported
    assert all(row["fact_f1"] > 0 and row["judge_model"] == "factcheck:f1" for row in pref_rows)
    lineage = run_lineage(out)
    claims = [c for rec in lineage for chk in rec["facts"]["checks"] for c in chk["claims"]]
    assert {c["verdict"] for c in claims} == {"supported", "not_supported"}
    assert all(e["source"].startswith("https://en.wikipedia.org/wiki/") for c in claims for e in c["evidence"])
    assert any(e["title"] == "Paris" and e["cited"] for c in claims for e in c["evidence"])
    stats = json.loads((out / "stats.json").read_text())["stages"]["factcheck"]
    assert stats["counters"]["searches"] > 0
    with sqlite3.connect(out / "calls.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM searches").fetchone()[0] > 0
    again = tmp_path / "again"  # a second run with the shared cache: every search comes from the log
    r = factory("run", factcheck_config(tmp_path), "--model", "openai:test-model", "--prompts", prompts, "--out", again,
                "--cache-dir", tmp_path / "shared")
    assert r.returncode == 0, r.stderr
    counters = json.loads((again / "stats.json").read_text())["stages"]["factcheck"]["counters"]
    assert counters["cached_searches"] == counters["searches"] == stats["counters"]["searches"]


@pytest.mark.model
def test_factcheck_pipeline_on_the_embedded_model(tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = factcheck_config(tmp_path, max_claims=2, queries=1)  # small, so it stays quick on 2 busy cores
    cfg = yaml.safe_load(config.read_text())
    cfg["stages"]["critique_revise"] = None
    cfg["stages"]["answer"]["max_tokens"] = 64
    cfg["stages"]["export"]["clean"] = {"drop_truncated": False, "quality": {"enabled": []}}
    config.write_text(yaml.safe_dump(cfg))
    r = factory("run", config, "--limit", "2", "--out", out)
    assert r.returncode == 0, r.stderr
    lineage = run_lineage(out)
    assert len(lineage) == 2 and all(rec["facts"]["checks"] for rec in lineage)
    claims = [c for rec in lineage for chk in rec["facts"]["checks"] for c in chk["claims"]]
    assert any(c["verdict"] for c in claims) and any(e["source"].startswith("https://en.wikipedia.org/")
                                                    for c in claims for e in c["evidence"])
    sft = [row for split in load_dataset(str(out), "sft").values() for row in split]
    assert len(sft) == 2 and all(row["fact_f1"] is not None for row in sft)
