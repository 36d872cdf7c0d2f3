"""Export rows: what each record contributes to each config (sft, prefs, kto, reward).

Default: one SFT row (the first candidate's final text) and a pair per changed revision. Judged: the
judge's top option and its pairs. IDK: one SFT row (the question and its target: a correct sample, or
a decline) and one pair per rejected wrong answer (target chosen). Fact-checked: the default rows gain
`fact_precision` and `fact_f1` of the text they train on (the chosen text for pairs); with `prefer`,
the SFT row is the best-supported text and the pair is the factcheck's (better supported chosen).
Which stage's rows a record gets is decided here, in `labelled_rows`; the configuration refuses
combinations whose rows would be discarded (factory/stages/registry.py)."""

from __future__ import annotations

from collections.abc import Iterator

from factory.config import ExportConfig
from factory.constitution import Constitution
from factory.engine.stats import StageStats
from factory.records import FactCheck, Record, normalise

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
    label = rec.idk
    assert label is not None
    prov = provenance(rec, [], constitution, generator)
    answers = {c.index: c.answer for c in rec.candidates}
    yield "sft", {"messages": [*rec.conversation, *turn(label.target)], **prov}
    if not label.rejected:
        st.drop("prefs:idk_all_correct")
    labelled: set[str] = set()
    for index in label.rejected:
        yield from pair_rows(rec.conversation, label.target, answers[index], prov, {}, cfg, labelled)


def _prefer_rows(rec: Record, constitution: Constitution, generator: str, cfg: ExportConfig, st: StageStats) -> Rows:
    facts = rec.facts
    assert facts is not None
    user = rec.conversation
    rounds = {c.index: [r.principle_id for r in c.rounds] for c in rec.candidates}

    def principles(check: FactCheck) -> list[str]:
        return rounds.get(check.candidate, []) if check.kind != "initial" else []

    if not facts.pairs:
        first = rec.candidates[0]
        yield "sft", {"messages": [*user, *turn(first.final)], **_fact_columns(facts.scores_of(first.final)),
                      **provenance(rec, rounds[first.index], constitution, generator)}
        st.drop("prefs:fact_no_pair")
        return
    labelled: set[str] = set()
    for i, pair in enumerate(facts.pairs):
        chosen, rejected = facts.checks[pair.chosen], facts.checks[pair.rejected]
        if i == 0:
            yield "sft", {"messages": [*user, *turn(chosen.text)], **_fact_columns(chosen),
                          **provenance(rec, principles(chosen), constitution, generator)}
        prov = provenance(rec, sorted(set(principles(chosen) + principles(rejected))), constitution, generator)
        judged = {"score_chosen": pair.score_chosen, "score_rejected": pair.score_rejected,
                  "margin": round(pair.score_chosen - pair.score_rejected, 6), "judge_model": f"factcheck:{pair.metric}"}
        for name, row in pair_rows(rec.conversation, chosen.text, rejected.text, prov, judged, cfg, labelled):
            yield name, (row | _fact_columns(chosen)) if name == "prefs" else row


def provenance(rec: Record, principle_ids: list[str], constitution: Constitution, generator: str) -> dict:
    """Where a row came from. The record's own constitution and answer model win over the run's, so
    merged runs keep each row's true origin."""
    own = rec.constitution
    model = next((c.model for c in rec.calls if c.stage == "answer"), generator)
    return {"prompt_id": rec.id, "principle_ids": principle_ids, "constitution": own.name if own else constitution.label,
            "constitution_hash": own.digest if own else constitution.digest, "generator_model": model}


def turn(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def rows(rec: Record, constitution: Constitution, generator: str, cfg: ExportConfig,
         st: StageStats) -> Iterator[tuple[str, dict]]:
    """(config, row) for one record: the default rows below, or those of the stage that labelled it (idk, fact-check)."""
    return labelled_rows(rec, _rows(rec, constitution, generator, cfg, st), constitution, generator, cfg, st)


def _rows(rec: Record, constitution: Constitution, generator: str, cfg: ExportConfig,
          st: StageStats) -> Iterator[tuple[str, dict]]:
    """(config, row) for one record. Unjudged: one SFT row (the first candidate's final text) and one
    pair per candidate whose revision changed it (revision over first answer). Judged: the SFT row
    is the top-ranked option, and the pairs are the judge's, filtered by margin and consistency."""
    if rec.judgement is None:
        for cand in rec.candidates:
            prov = provenance(rec, [r.principle_id for r in cand.rounds], constitution, generator)
            if cand.index == rec.candidates[0].index:
                yield "sft", {"messages": [*rec.conversation, *turn(cand.final)], **prov}
            if normalise(cand.final) == normalise(cand.answer):
                st.drop(f"prefs:gate_{cand.gated}" if cand.gated else "prefs:revision_unchanged")
                continue
            yield from pair_rows(rec.conversation, cand.final, cand.answer, prov, {}, cfg, set())
        return
    yield from _judged_rows(rec, constitution, generator, cfg, st)


def _judged_rows(rec: Record, constitution: Constitution, generator: str, cfg: ExportConfig,
                 st: StageStats) -> Iterator[tuple[str, dict]]:
    j = rec.judgement
    assert j is not None
    user = rec.conversation
    rounds = {c.index: [r.principle_id for r in c.rounds] for c in rec.candidates}
    best = max(range(len(j.options)), key=lambda i: (j.scores[i], -i)) if j.scores else 0
    opt = j.options[best]
    yield "sft", {"messages": [*user, *turn(opt.text)],
                  **provenance(rec, rounds[opt.candidate] if opt.kind == "final" else [], constitution, generator)}
    if not j.pairs:
        reason = "single_option" if len(j.options) < 2 else "unjudged" if not j.scores else "tie"
        st.drop(f"prefs:{reason}")
    kto: dict[int, dict] = {}  # option -> provenance of its first kept pair
    for pair in j.pairs:
        margin = round(2 * pair.p_chosen - 1, 6)
        if margin < cfg.min_margin:
            st.drop("prefs:below_min_margin")
            continue
        if cfg.consistent_only and pair.consistent is False:
            st.drop("prefs:position_inconsistent")
            continue
        if cfg.gate_judge_reversed and reversed_both_orders(j, pair.chosen, pair.rejected):
            st.drop("prefs:gate_judge_reversed")
            continue
        chosen, rejected = j.options[pair.chosen], j.options[pair.rejected]
        prov = provenance(rec, sorted(set(rounds[chosen.candidate] + rounds[rejected.candidate])), constitution,
                           generator)
        judged = {"score_chosen": pair.score_chosen, "score_rejected": pair.score_rejected, "p_chosen": pair.p_chosen,
                  "margin": margin, "position_consistent": pair.consistent, "judge_model": pair.judge_model,
                  "judge_principle_ids": pair.principle_ids}
        yield from pair_rows(rec.conversation, chosen.text, rejected.text, prov, judged, cfg, set(), kto=False)
        for i in (pair.chosen, pair.rejected):
            kto.setdefault(i, prov)
    if cfg.kto and kto:
        yield from _ranked_kto(user, j.options, j.scores, kto, st)


def _ranked_kto(user: list[dict], options: list, scores: list[float], kept: dict[int, dict],
                st: StageStats) -> Iterator[tuple[str, dict]]:
    """KTO rows from the ranking, for the options in kept pairs: the top-ranked option is desirable,
    the bottom-ranked undesirable; an option ranked between them has no label of its own (it won
    some comparisons and lost others) and is dropped, counted as `kto:middle_of_ranking`."""
    top, bottom = max(scores), min(scores)
    for i, prov in kept.items():
        if scores[i] not in (top, bottom):
            st.drop("kto:middle_of_ranking")
            continue
        yield "kto", {"prompt": user, "completion": turn(options[i].text), "label": scores[i] == top, **prov}


def reversed_both_orders(j, chosen: int, rejected: int) -> bool:
    """The judge compared the two texts directly, in both orders, and each time preferred `rejected`."""
    prefers = []
    for comp in j.comparisons:
        for v in comp.verdicts:
            if {v.a, v.b} == {chosen, rejected} and v.p_a is not None and v.p_a != 0.5:
                prefers.append((v.a == rejected) == (v.p_a > 0.5))
    orders = {v.a for comp in j.comparisons for v in comp.verdicts if {v.a, v.b} == {chosen, rejected}}
    return len(orders) == 2 and bool(prefers) and all(prefers)


def pair_rows(user: list[dict], chosen: str, rejected: str, prov: dict, judged: dict, cfg: ExportConfig,
              labelled: set[str], kto: bool = True) -> Iterator[tuple[str, dict]]:
    """One preference pair as a `prefs` row, plus its `reward` row and its `kto` rows (each text of a
    record labelled once: `labelled` remembers them) where configured. Judged records pass kto=False:
    their KTO labels come from the ranking (_ranked_kto). `user`: the conversation up to the user's last
    turn (the system prompt and earlier turns kept: TRL's conversational prompt)."""
    yield "prefs", {"prompt": user, "chosen": turn(chosen), "rejected": turn(rejected), **judged, **prov}
    if cfg.reward:
        yield "reward", {"chosen": [*user, *turn(chosen)], "rejected": [*user, *turn(rejected)],
                         "margin": judged.get("margin"), **prov}
    if cfg.kto and kto:
        for text, label in ((chosen, True), (rejected, False)):
            if text not in labelled:
                labelled.add(text)
                yield "kto", {"prompt": user, "completion": turn(text), "label": label, **prov}
