"""Export rows for records the idk and factcheck stages labelled (called from export.rows).

IDK: one SFT row (the question and its target: a correct sample, or a decline) and one pair per
rejected wrong answer (target chosen). Fact-checked: the default rows gain `fact_precision` and
`fact_f1` of the text they train on (the chosen text for pairs); with `prefer`, the SFT row is the
best-supported text and the pair is the factcheck's (better supported chosen)."""

from __future__ import annotations

from collections.abc import Iterator

from factory.config import ExportConfig
from factory.constitution import Constitution
from factory.engine.stats import StageStats
from factory.records import FactCheck, Record

FACT_COLUMNS = ("fact_precision", "fact_f1")
Rows = Iterator[tuple[str, dict]]


def labelled_rows(rec: Record, default: Rows, constitution: Constitution, generator: str, cfg: ExportConfig,
                  st: StageStats) -> Rows:
    if rec.idk is not None:
        yield from _idk_rows(rec, constitution, generator, cfg, st)
    elif rec.facts is not None and rec.facts.prefer:
        yield from _prefer_rows(rec, constitution, generator, cfg, st)
    elif rec.facts is not None:
        for name, row in default:
            yield name, _with_facts(rec, name, row)
    else:
        yield from default


def _with_facts(rec: Record, name: str, row: dict) -> dict:
    """`row` plus the fact scores of the text it trains on (sft) or prefers (prefs); null if unchecked."""
    if name not in ("sft", "prefs") or rec.facts is None:
        return row
    text = row["messages"][-1]["content"] if name == "sft" else row["chosen"][0]["content"]
    check = rec.facts.scores_of(text)
    return row | _fact_columns(check)


def _fact_columns(check: FactCheck | None) -> dict:
    return {"fact_precision": check.precision, "fact_f1": check.f1} if check else dict.fromkeys(FACT_COLUMNS)


def _idk_rows(rec: Record, constitution: Constitution, generator: str, cfg: ExportConfig, st: StageStats) -> Rows:
    from factory.export.writer import _provenance, _turn, pair_rows

    label = rec.idk
    assert label is not None
    prov = _provenance(rec, [], constitution, generator)
    answers = {c.index: c.answer for c in rec.candidates}
    yield "sft", {"messages": [{"role": "user", "content": rec.prompt}, *_turn(label.target)], **prov}
    if not label.rejected:
        st.drop("prefs:idk_all_correct")
    labelled: set[str] = set()
    for index in label.rejected:
        yield from pair_rows(rec.prompt, label.target, answers[index], prov, {}, cfg, labelled)


def _prefer_rows(rec: Record, constitution: Constitution, generator: str, cfg: ExportConfig, st: StageStats) -> Rows:
    from factory.export.writer import _provenance, _turn, pair_rows

    facts = rec.facts
    assert facts is not None
    user = [{"role": "user", "content": rec.prompt}]
    rounds = {c.index: [r.principle_id for r in c.rounds] for c in rec.candidates}

    def principles(check: FactCheck) -> list[str]:
        return rounds.get(check.candidate, []) if check.kind != "initial" else []

    if not facts.pairs:
        first = rec.candidates[0]
        yield "sft", {"messages": [*user, *_turn(first.final)], **_fact_columns(facts.scores_of(first.final)),
                      **_provenance(rec, rounds[first.index], constitution, generator)}
        st.drop("prefs:fact_no_pair")
        return
    labelled: set[str] = set()
    for i, pair in enumerate(facts.pairs):
        chosen, rejected = facts.checks[pair.chosen], facts.checks[pair.rejected]
        if i == 0:
            yield "sft", {"messages": [*user, *_turn(chosen.text)], **_fact_columns(chosen),
                          **_provenance(rec, principles(chosen), constitution, generator)}
        prov = _provenance(rec, sorted(set(principles(chosen) + principles(rejected))), constitution, generator)
        judged = {"score_chosen": pair.score_chosen, "score_rejected": pair.score_rejected,
                  "margin": round(pair.score_chosen - pair.score_rejected, 6), "judge_model": f"factcheck:{pair.metric}"}
        for name, row in pair_rows(rec.prompt, chosen.text, rejected.text, prov, judged, cfg, labelled):
            yield name, (row | _fact_columns(chosen)) if name == "prefs" else row
