""""I don't know" labelling: normalised matching, the labelling rules at each boundary, declines
from the file, the judge match, drops, and the pipeline end to end over the real HTTP server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml
from conftest import ScriptedModel, make_caller, run_lineage
from datasets import load_dataset
from test_cli import factory

from factory.config import ExportConfig, IdkConfig, load_config
from factory.constitution import load_constitution
from factory.engine.calllog import CallLog
from factory.engine.pipeline import Overrides, Pipeline
from factory.engine.stats import StageStats
from factory.errors import InputError
from factory.export.rows import rows
from factory.prompts import load_template
from factory.records import Candidate, Record
from factory.stages.idk import JUDGE_VARIABLES, IdkStage, load_declines, match_reference, normalise_answer

ROOT = Path(__file__).resolve().parent.parent
HARMLESS = load_constitution(ROOT / "constitutions" / "harmless.yaml")
DECLINES = load_declines(ROOT / "prompts", "idk_declines")
M = "fake:quiz"


@pytest.mark.parametrize("answer,refs,matched", [
    ("Paris.", ["Paris"], "Paris"),
    ("The capital is PARIS!", ["paris"], "paris"),
    ("It is the Nile river.", ["the Nile"], "the Nile"),  # articles do not count
    ("“Tokyo”, of course", ["Tokyo"], "Tokyo"),  # typographic quotes are punctuation
    ("It was Leonardo da Vinci.", ["Leonardo da Vinci", "Leonardo"], "Leonardo da Vinci"),
    ("Leonardo painted it", ["Leonardo da Vinci", "Leonardo"], "Leonardo"),  # any reference will do
    ("A Parisian city", ["Paris"], None),  # whole words only
    ("Lyon", ["Paris"], None),
    ("I don't know.", ["Paris"], None),
    ("The answer", ["The"], None),  # a reference that normalises to nothing never matches
    ("In 1989.", ["1989"], "1989"),
    ("", ["Paris"], None),
])
def test_normalised_match(answer: str, refs: list[str], matched: str | None) -> None:
    assert match_reference(answer, refs) == matched


def test_an_answer_naming_a_known_wrong_answer_is_wrong(tmp_path: Path) -> None:
    wrong = ["French", "France", "German"]
    assert match_reference("She was English.", ["English", "British"], wrong) == "English"
    assert match_reference("An English or French writer.", ["English", "British"], wrong) is None  # a hedge
    assert match_reference("A Frenchman? No: English.", ["English"], wrong) == "English"  # whole words only
    meta = {"answers": ["Paris"], "wrong_answers": ["Lyon", "Nice"]}
    rec = Record.new("What is the capital of France?", "file", **meta)
    rec.candidates = [Candidate(index=i, answer=a, finish_reason="stop")
                      for i, a in enumerate(["Paris.", "Paris or Lyon.", "Lyon."])]
    bad = Record.new("What is the capital of Spain?", "file", answers=["Madrid"], wrong_answers="Lyon")
    bad.candidates = rec.candidates[:1]
    log = CallLog(tmp_path / "c.sqlite")
    for r in (rec, bad):
        asyncio.run(IdkStage(IdkConfig(), DECLINES, None, M, 0).process(r, make_caller({M: ScriptedModel(spec=M)}, log)))
    log.close()
    assert [x.correct for x in rec.idk.samples] == [True, False, False] and rec.idk.p_ik == round(1 / 3, 6)
    assert (bad.dropped.reason, bad.idk) == ("bad_wrong_answers", None) and "wrong_answers" in bad.dropped.detail


def test_normalise_answer() -> None:
    assert normalise_answer("  The Eiffel  Tower! ") == "eiffel tower"
    assert normalise_answer("An apple, a pear.") == "apple pear"


def label(tmp_path: Path, answers: list[str], refs: object = ("Paris",), cfg: IdkConfig | None = None,
          prompt: str = "What is the capital of France?", model: ScriptedModel | None = None,
          judge: bool = False) -> tuple[Record, StageStats]:
    cfg = cfg or IdkConfig()
    template = load_template(ROOT / "prompts", "idk_judge", JUDGE_VARIABLES) if judge else None
    stage = IdkStage(cfg, DECLINES, template, M, 0)
    meta = {} if refs is None else {"answers": list(refs) if isinstance(refs, tuple) else refs}
    rec = Record.new(prompt, "file", **meta)
    rec.candidates = [Candidate(index=i, answer=a, finish_reason="stop") for i, a in enumerate(answers)]
    log = CallLog(tmp_path / f"c-{len(list(tmp_path.iterdir()))}.sqlite")
    caller = make_caller({M: model or ScriptedModel(spec=M)}, log)
    asyncio.run(stage.process(rec, caller))
    log.close()
    return rec, caller.stats["idk"]


def export_rows(rec: Record, **cfg) -> tuple[dict[str, list[dict]], StageStats]:
    st = StageStats()
    out = list(rows(rec, HARMLESS, "gen", ExportConfig(**cfg), st))
    return {name: [r for n, r in out if n == name] for name in ("sft", "prefs", "kto", "reward")}, st


WRONG = ["Lyon.", "Marseille.", "It is Nice.", "Bordeaux.", "Lille."]


def test_none_correct_gives_a_decline_over_each_wrong_answer(tmp_path: Path) -> None:
    rec, st = label(tmp_path, WRONG)
    idk = rec.idk
    assert (idk.label, idk.p_ik, idk.rejected) == ("decline", 0.0, [0, 1, 2, 3, 4])
    assert idk.target == DECLINES[idk.decline] and [s.correct for s in idk.samples] == [False] * 5
    by, _ = export_rows(rec, kto=True)
    (sft,) = by["sft"]
    assert sft["messages"] == [{"role": "user", "content": rec.prompt}, {"role": "assistant", "content": idk.target}]
    assert [p["rejected"][0]["content"] for p in by["prefs"]] == WRONG
    assert all(p["chosen"][0]["content"] == idk.target and "p_chosen" not in p for p in by["prefs"])
    assert [k["label"] for k in by["kto"]] == [True] + [False] * 5
    assert st.counters["label:decline"] == 1 and st.counters["correct:0/5"] == 1
    one, _ = label(tmp_path, WRONG, cfg=IdkConfig(pairs="one"))
    assert len(one.idk.rejected) == 1 and one.idk.rejected[0] in range(5)
    assert len(export_rows(one)[0]["prefs"]) == 1


def test_one_correct_becomes_the_target(tmp_path: Path) -> None:
    rec, _ = label(tmp_path, ["Lyon.", "Marseille.", "Paris, of course.", "Nice.", "Lille."])
    idk = rec.idk
    assert (idk.label, idk.p_ik, idk.target, idk.decline) == ("answer", 0.2, "Paris, of course.", None)
    assert idk.rejected == [0, 1, 3, 4] and idk.samples[2].matched == "Paris"
    by, _ = export_rows(rec)
    assert by["sft"][0]["messages"][-1]["content"] == "Paris, of course."
    assert len(by["prefs"]) == 4 and {p["chosen"][0]["content"] for p in by["prefs"]} == {"Paris, of course."}
    once, _ = label(tmp_path, ["Lyon.", "Marseille.", "Paris, of course.", "Nice.", "Lille."],
                    cfg=IdkConfig(decline_max_correct=1))  # one right in 5 is still a decline here
    assert (once.idk.label, once.idk.p_ik, once.idk.rejected) == ("decline", 0.2, [0, 1, 3, 4])
    assert once.idk.target in DECLINES
    twice, _ = label(tmp_path, ["Lyon.", "Paris.", "Paris, of course.", "Nice.", "Lille."],
                     cfg=IdkConfig(decline_max_correct=1))
    assert (twice.idk.label, twice.idk.target) == ("answer", "Paris.")


def test_all_correct_gives_no_pairs(tmp_path: Path) -> None:
    rec, _ = label(tmp_path, ["Paris."] * 4 + ["The capital is Paris."])
    assert (rec.idk.label, rec.idk.p_ik, rec.idk.rejected, rec.idk.target) == ("answer", 1.0, [], "Paris.")
    by, st = export_rows(rec)
    assert len(by["sft"]) == 1 and by["prefs"] == [] and st.dropped["prefs:idk_all_correct"] == 1


def test_declines_vary_across_records_and_come_from_the_file(tmp_path: Path) -> None:
    targets = [label(tmp_path, WRONG[:2], prompt=f"Who won the prize in year {i}?")[0].idk.target for i in range(24)]
    assert set(targets) <= set(DECLINES) and len(set(targets)) >= 8
    again = label(tmp_path, WRONG[:2], prompt="Who won the prize in year 3?")[0].idk.target
    assert again == targets[3]  # seeded per record
    assert len(DECLINES) >= 12 and len(set(DECLINES)) == len(DECLINES)


def test_a_declines_file_needs_varied_phrasings(tmp_path: Path) -> None:
    (tmp_path / "one.yaml").write_text("declines: [\"I don't know.\"]\n")
    (tmp_path / "same.yaml").write_text("declines: [\"I don't know.\", \"I don't know.\"]\n")
    for name in ("one", "same"):
        with pytest.raises(InputError, match="declines"):
            load_declines(tmp_path, name)


@pytest.mark.parametrize("refs,reason", [(None, "missing_answers"), ([], "bad_answers"), ([3], "bad_answers"),
                                         ("Paris", None)])
def test_records_without_usable_answers_are_dropped(tmp_path: Path, refs, reason) -> None:
    rec, _ = label(tmp_path, ["Paris."], refs=refs)
    if reason is None:  # a single string is one reference
        assert rec.idk.references == ["Paris"] and not rec.dropped
        return
    assert (rec.dropped.stage, rec.dropped.reason) == ("idk", reason)
    assert "'answers' field" in rec.dropped.detail


def test_judge_match_with_a_fallback(tmp_path: Path) -> None:
    def grader(messages, params) -> str:
        assert messages[-1] == {"role": "assistant", "content": "Correct:"}  # the prefill
        graded = messages[-2]["content"].rsplit("Answer to grade:", 1)[1]
        return "Yes." if "City of Light" in graded else "No, it is not."

    rec, st = label(tmp_path, ["The City of Light.", "Lyon."], model=ScriptedModel(grader, spec=M), judge=True,
                    cfg=IdkConfig(match="judge"))
    assert [(s.correct, s.by) for s in rec.idk.samples] == [(True, "judge"), (False, "judge")]
    assert rec.idk.target == "The City of Light." and [c.template for c in rec.calls] == ["idk_judge"] * 2
    rec, st = label(tmp_path, ["Paris.", "Lyon."], model=ScriptedModel(lambda m, p: "Maybe.", spec=M), judge=True,
                    cfg=IdkConfig(match="judge"))
    assert [(s.correct, s.by) for s in rec.idk.samples] == [(True, "normalised"), (False, "normalised")]
    assert st.counters["judge_unparseable_used_normalised"] == 2


def test_critique_revise_is_optional_and_on_by_default() -> None:
    idk = Pipeline.prepare(load_config(ROOT / "pipelines" / "idk.yaml"), Overrides())
    assert idk.record_stages == ["answer", "idk"] and "critique" not in idk.templates and len(idk.declines) >= 12
    assert [s.name for s in idk.stages()] == ["answer", "idk"]
    default = load_config(ROOT / "pipelines" / "default.yaml")
    assert default.stages.critique_revise is not None and default.stages.idk is None


def test_idk_pipeline_over_http(api, tmp_path: Path) -> None:
    cfg = yaml.safe_load((ROOT / "pipelines" / "idk.yaml").read_text())
    for key in ("constitution", "prompts_dir"):
        cfg[key] = str((ROOT / "pipelines" / cfg[key]).resolve())
    cfg["stages"]["questions"]["seeds"] = []
    cfg["stages"]["idk"]["match"] = "judge"
    (config := tmp_path / "idk.yaml").write_text(yaml.safe_dump(cfg))
    questions = [{"prompt": "What is the capital of France?", "answers": ["Paris"]},
                 {"prompt": "What is the capital of Japan?", "answers": ["Tokyo"]},
                 {"prompt": "What is the capital of Atlantis?", "answers": ["Poseidonia"]},
                 {"prompt": "What is the capital of Peru?"}]
    (prompts := tmp_path / "qa.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    out = tmp_path / "run"
    r = factory("run", config, "--model", "openai:test-model", "--prompts", prompts, "--out", out)
    assert r.returncode == 0, r.stderr
    sft = [row for split in load_dataset(str(out), "sft").values() for row in split]
    prefs = [row for split in load_dataset(str(out), "prefs").values() for row in split]
    targets = {row["messages"][0]["content"]: row["messages"][-1]["content"] for row in sft}
    assert targets["What is the capital of France?"] == "It is Paris." and len(targets) == 3
    assert targets["What is the capital of Atlantis?"] in DECLINES
    assert len(prefs) == 5 and all(p["chosen"][0]["content"] in DECLINES for p in prefs)
    assert all(p["rejected"][0]["content"] == "I believe it is Atlantis." and p["p_chosen"] is None for p in prefs)
    stats = json.loads((out / "stats.json").read_text())["stages"]
    assert stats["idk"]["dropped"] == {"missing_answers": 1} and "critique_revise" not in stats
    assert stats["idk"]["counters"]["label:decline"] == 1 and stats["answer"]["calls"] == 20
    lineage = {rec["prompt"]: rec for rec in run_lineage(out)}
    assert lineage["What is the capital of Japan?"]["idk"]["p_ik"] == 1.0
    assert all(s["by"] == "judge" for s in lineage["What is the capital of Japan?"]["idk"]["samples"])
