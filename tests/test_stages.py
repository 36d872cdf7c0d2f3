"""Stage logic with a scripted fake model (unit tests only)."""

import asyncio
import itertools
from pathlib import Path

import pytest
from conftest import ScriptedModel, drain, kind_of, make_caller

from factory.config import AnswerConfig, CritiqueReviseConfig, ExportConfig, QuestionsConfig
from factory.constitution import load_constitution
from factory.engine.stats import StageStats
from factory.export.rows import rows
from factory.export.writer import split_of
from factory.prompts import load_template
from factory.records import Record
from factory.stages import answer, critique_revise, questions
from factory.stages.answer import AnswerStage
from factory.stages.critique_revise import CritiqueReviseStage, clean_revision
from factory.stages.questions import QuestionsStage, parse_questions

M = "fake:scripted"


@pytest.fixture
def harmless(repo: Path):
    return load_constitution(repo / "constitutions" / "harmless.yaml")


def tpl(repo: Path, name: str, variables: set[str]):
    return load_template(repo / "prompts", name, variables)


def critique_stage(repo, harmless, rounds=1, few_shot=2, seed=0):
    return CritiqueReviseStage(
        CritiqueReviseConfig(rounds=rounds, few_shot=few_shot), harmless,
        tpl(repo, "critique", critique_revise.CRITIQUE_VARIABLES),
        tpl(repo, "revision", critique_revise.REVISION_VARIABLES), M, seed,
    )


def answered(repo, caller, prompt="How do I pick a lock?", candidates=1, seed=0) -> Record:
    rec = Record.new(prompt, "file")
    stage = AnswerStage(AnswerConfig(candidates=candidates), tpl(repo, "answer", answer.VARIABLES), M, seed)
    asyncio.run(stage.process(rec, caller))
    return rec


def test_answer_makes_candidates_with_distinct_seeds_and_lineage(repo, caller, scripted):
    rec = answered(repo, caller, candidates=3)
    assert [c.index for c in rec.candidates] == [0, 1, 2]
    assert rec.candidates[0].answer == "Initial answer to: How do I pick a lock?"
    assert len({p.seed for _, p in scripted.calls}) == 3
    assert [c.purpose for c in rec.calls] == ["answer[0]", "answer[1]", "answer[2]"]
    assert all(c.template == "answer" and len(c.template_hash) == 64 for c in rec.calls)


def test_empty_answers_drop_the_record_with_a_reason(repo, tmp_path):
    from factory.engine.calllog import CallLog

    model = ScriptedModel(lambda m, p: "   ")
    caller = make_caller({M: model}, CallLog(tmp_path / "c.sqlite"))
    rec = answered(repo, caller, candidates=2)
    assert rec.dropped.stage == "answer" and rec.dropped.reason == "empty_answer"
    assert caller.stats["answer"].counters["empty_candidate"] == 2


def test_critique_revise_rounds_principles_and_cleaning(repo, caller, harmless, scripted):
    rec = answered(repo, caller)
    asyncio.run(critique_stage(repo, harmless, rounds=3).process(rec, caller))
    cand = rec.candidates[0]
    assert len(cand.rounds) == 3
    assert all(r.principle_id in {p.id for p in harmless.principles} for r in cand.rounds)
    # boilerplate stripped, critique kept per round
    assert cand.rounds[0].revision.startswith("A careful, kind answer to")
    assert cand.rounds[0].critique == "The response could be more careful and kinder."
    assert not cand.rounds[0].noop and cand.rounds[1].noop  # round 2 rewrites to the same text
    assert caller.stats["critique_revise"].counters["noop_revision"] == 2
    kinds = [kind_of(m) for m, _ in scripted.calls]
    assert kinds == ["answer"] + ["critique", "revision"] * 3
    # the revision prompt carries the critique; the critique prompt carries the principle text
    crit_msgs, _ = scripted.calls[1]
    rev_msgs, _ = scripted.calls[2]
    assert harmless.principle(cand.rounds[0].principle_id).critique in crit_msgs[-1]["content"]
    assert "The response could be more careful" in rev_msgs[-1]["content"]


@pytest.mark.slow  # many records through a pipeline
def test_principle_draws_follow_the_seed_not_the_order(repo, caller, harmless):
    def draws(seed, prompts):
        out = {}
        for p in prompts:
            rec = answered(repo, caller, p, seed=seed)
            asyncio.run(critique_stage(repo, harmless, rounds=4, seed=seed).process(rec, caller))
            out[p] = rec.principle_ids
        return out

    prompts = [f"Question number {i} about cooking?" for i in range(6)]
    a, b, c = draws(0, prompts), draws(0, prompts[::-1]), draws(1, prompts)
    assert a == b and a != c
    assert len({pid for ids in a.values() for pid in ids}) > 4  # draws spread over principles


def test_few_shot_always_shows_an_unchanged_example(repo, harmless):
    stage = critique_stage(repo, harmless, few_shot=2)
    rec = Record.new("anything", "file")
    for rnd in range(30):
        exs = stage.examples(rec, 0, rnd)
        assert len(exs) == 2 and any(e["revision"] == e["response"] for e in exs)
        assert all(e["critique_request"] and e["revision_request"] for e in exs)
    assert critique_stage(repo, harmless, few_shot=0).examples(rec, 0, 1) == []


@pytest.mark.parametrize("raw,clean", [
    ("Here is a revised response: Hello there.", "Hello there."),
    ("Sure! Here's the rewritten answer:\nHello there.", "Hello there."),
    ("Revised response: Hello there.", "Hello there."),
    ("Revision: \"Hello there.\"", "Hello there."),
    ("Here is my answer to your question.", "Here is my answer to your question."),
    ("Hello: there.", "Hello: there."),
])
def test_clean_revision(raw, clean):
    assert clean_revision(raw) == clean


def test_parse_questions():
    text = "1. How do I bake bread at home?\n- What is the capital of Peru?\n\nHere are some:\nok\n\"Why is the sky blue today?\""
    qs, rejected = parse_questions(text)
    assert qs == ["How do I bake bread at home?", "What is the capital of Peru?", "Why is the sky blue today?"]
    assert rejected == 2


def test_questions_generate_dedup_and_count(repo, caller, scripted):
    seeds = [Record.new(f"Seed prompt number {i}, please help?", "seed") for i in range(6)]
    seeds.append(Record.new("seed prompt number 0, please help", "seed"))  # duplicate after normalising
    stage = QuestionsStage(QuestionsConfig(generate=7, questions_per_call=5, max_seeds=None),
                           tpl(repo, "questions", questions.VARIABLES), M, 0, seeds)
    recs = drain(stage, caller)
    st = caller.stats["questions"]
    assert len(recs) == 6 + 7 and st.dropped["duplicate_prompt"] == 1
    generated = [r for r in recs if r.source == "generated"]
    assert len(generated) == 7 and st.dropped["surplus_generated"] == 3 and "duplicate_generated" not in st.dropped
    assert all(r.calls and r.calls[0].template == "questions" for r in generated)
    assert all(len(r.metadata["generated_from"]) == 4 for r in generated)


def test_questions_limit_and_seed_sample(repo, caller):
    seeds = [Record.new(f"Seed prompt number {i}, please help?", "seed") for i in range(10)]
    t = tpl(repo, "questions", questions.VARIABLES)
    recs = drain(QuestionsStage(QuestionsConfig(max_seeds=4), t, M, 0, seeds), caller)
    again = drain(QuestionsStage(QuestionsConfig(max_seeds=4), t, M, 0, seeds), caller)
    assert len(recs) == 4 and [r.id for r in recs] == [r.id for r in again]
    recs = drain(QuestionsStage(QuestionsConfig(generate=5), t, M, 0, seeds, limit=12), caller)
    assert len(recs) == 12 and sum(r.source == "generated" for r in recs) == 2


def test_export_rows_are_trl_shaped(repo, caller, harmless):
    recs = []
    for p in ["How do I pick a lock?", "Tell me a joke about cats"]:
        rec = answered(repo, caller, p, candidates=2)
        asyncio.run(critique_stage(repo, harmless).process(rec, caller))
        recs.append(rec)
    unchanged = recs[1].candidates[1]  # changed in round 1, changed back in round 2: no pair
    unchanged.rounds.append(unchanged.rounds[0].model_copy(update={"revision": unchanged.answer, "noop": False}))
    st = StageStats()
    out = {"sft": [], "prefs": []}
    for rec in recs:
        for name, row in rows(rec, harmless, M, ExportConfig(), st):
            out[name].append(row)
    assert len(out["sft"]) == 2 and len(out["prefs"]) == 3 and st.dropped["prefs:revision_unchanged"] == 1
    sft = out["sft"][0]
    assert [m["role"] for m in sft["messages"]] == ["user", "assistant"]
    pref = out["prefs"][0]
    assert pref["prompt"][0]["role"] == "user" and pref["chosen"][0]["role"] == "assistant"
    assert pref["chosen"][0]["content"] != pref["rejected"][0]["content"]
    assert pref["constitution"] == "harmless@1.0.0" and pref["constitution_hash"] == harmless.digest


def test_split_is_deterministic_and_roughly_proportional():
    ids = [Record.new(f"prompt {i}", "file").id for i in range(2000)]
    tests = sum(split_of(i, 0.1) == "test" for i in ids)
    assert 140 < tests < 260
    assert all(split_of(i, 0.0) == "train" for i in ids) and all(split_of(i, 1.0) == "test" for i in ids)


def test_cache_serves_repeated_calls(repo, caller, scripted):
    answered(repo, caller)
    answered(repo, caller)
    assert len(scripted.calls) == 1
    st = caller.stats["answer"]
    assert st.calls == 2 and st.cached_calls == 1


def test_template_stop_sequences_reach_the_model(repo, caller, harmless, scripted):
    rec = answered(repo, caller)
    asyncio.run(critique_stage(repo, harmless).process(rec, caller))
    (_, answer_p), (_, crit_p), (_, rev_p) = scripted.calls
    assert answer_p.stop == () and "\nExample" in crit_p.stop and "\nCritique:" in rev_p.stop


def test_echoed_template_is_not_a_revision(repo, tmp_path, harmless):
    from factory.engine.calllog import CallLog

    def script(messages, params):
        kind = kind_of(messages)
        return {"answer": "Use a pick.", "critique": "Bad.", "revision": "Request: pick a lock\nResponse: Use a pick."}[kind]

    caller = make_caller({M: ScriptedModel(script)}, CallLog(tmp_path / "c.sqlite"))
    rec = answered(repo, caller)
    asyncio.run(critique_stage(repo, harmless).process(rec, caller))
    rnd = rec.candidates[0].rounds[0]
    assert rnd.revision == "Use a pick." and rnd.noop
    assert caller.stats["critique_revise"].counters["unusable_revision_kept_previous"] == 1


@pytest.mark.parametrize("cfg,limit", [
    (QuestionsConfig(max_seeds=3, generate=4), None),
    (QuestionsConfig(max_seeds=3, generate=4), 5),
    (QuestionsConfig(include_seeds=False, generate=4), None),
    (QuestionsConfig(generate=0), 2),
])
def test_questions_funnel_adds_up(repo, caller, cfg, limit):
    seeds = [Record.new(f"Seed prompt number {i}, please help?", "seed") for i in range(8)]
    seeds.append(Record.new("seed prompt number 1, please help", "seed"))
    t = tpl(repo, "questions", questions.VARIABLES)
    recs = drain(QuestionsStage(cfg, t, M, 0, seeds, limit=limit), caller)
    st = caller.stats["questions"]
    generated = st.counters["generated"]
    seed_drops = sum(v for k, v in st.dropped.items() if k in ("duplicate_prompt", "seed_not_sampled",
                                                                 "seed_used_as_example_only", "over_limit"))
    assert st.records_in - seed_drops + generated == len(recs) == st.records_out


def test_question_waves_grow_with_what_the_gates_drop(repo, tmp_path):
    """A model whose generated prompts mostly fail the gates: after the first wave, the next asks for
    what the observed yield needs at once (one wave of 4), not a full-yield wave of 2 after another."""
    from factory.engine.calllog import CallLog

    seen: list[int] = []
    asks = iter(["How do I fix a leaking kitchen tap?", "What should I pack for a winter hike?",
                 "Why does bread go stale so quickly?", "How can I learn to juggle three balls?",
                 "Which houseplants survive low light?", "What makes a good cover letter opening?"])

    def script(messages, params):
        seen.append(len(model.calls))  # calls started so far: all of a wave start before any answers
        return f"{next(asks)}\nBrrr grrr tsk pfft hmm?\nZzz mrrp shh brrt?\nPsst hrmm krr tsk?"

    model = ScriptedModel(script)
    caller = make_caller({M: model}, CallLog(tmp_path / "c.sqlite"))
    seeds = [Record.new(f"Seed prompt number {i}, please help?", "seed") for i in range(6)]
    stage = QuestionsStage(QuestionsConfig(generate=8, questions_per_call=4, max_seeds=None, include_seeds=False),
                           tpl(repo, "questions", questions.VARIABLES), M, 0, seeds)
    recs = drain(stage, caller)
    assert sorted(set(seen)) == [2, 6]  # wave 1: 2 calls, 1 prompt of 4 kept each; wave 2: the 4 calls left
    assert len(recs) == 6 and len(model.calls) == 6  # max_calls (3x the 2 needed) caps it


def test_expected_keep_sizes_the_first_wave(repo, tmp_path):
    """With `expected_keep` 0.25 the first wave asks for 8 prompts at a quarter's yield: 8 calls at
    once, one wave, instead of 2 then 6; the default cap is 3x that (24), not 3x the full yield's 2."""
    from factory.engine.calllog import CallLog

    seen: list[int] = []
    count = itertools.count()

    def script(messages, params):
        seen.append(len(model.calls))
        n = next(count)
        return f"How do I fix leaking tap number {n} in my old kitchen?\nBrrr grrr tsk pfft hmm?\nZzz mrrp shh?\nPsst hrmm?"

    model = ScriptedModel(script)
    caller = make_caller({M: model}, CallLog(tmp_path / "c.sqlite"))
    seeds = [Record.new(f"Seed prompt number {i}, please help?", "seed") for i in range(6)]
    cfg = QuestionsConfig(generate=8, questions_per_call=4, max_seeds=None, include_seeds=False,
                          expected_keep=0.25, near_dedup=None)
    stage = QuestionsStage(cfg, tpl(repo, "questions", questions.VARIABLES), M, 0, seeds)
    recs = drain(stage, caller)
    assert sorted(set(seen)) == [8] and len(model.calls) == 8  # one wave: 8 / (4 x 0.25) = 8 calls
    assert len(recs) == 8
    assert stage.max_calls(8) == 24
