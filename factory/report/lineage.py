"""Figures from a run's records (its lineage), read once as a stream: answer lengths, the judge's margins and
consistency, fact scores, per-principle counts and a seeded sample of records. Distributions are
kept as counts of values (lengths in words; scores in [0, 1] rounded to 3 decimals), so memory does
not grow with the number of records (bench/review_scale.py: 91 MB at 10^6 records when they were
lists of numbers, against 61 MB at 10^4)."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from factory.engine.rundir import RunDir
from factory.judging.quality import TIE
from factory.records import Record

SAMPLES, DROPPED_SAMPLES = 12, 4


@dataclass
class PrincipleRow:
    """One critique principle: how often it was drawn, how often its revision changed nothing, and
    what the judge and the fact checker made of the revisions it shaped."""

    drawn: int = 0
    noop: int = 0
    judged: int = 0  # initial-vs-final comparisons of candidates revised under it
    revision_won: int = 0
    p_revision: float = 0.0  # sum of P(revision better) over `judged`
    fact_delta: float = 0.0  # sum over `fact_compared` of F1 of the final text minus F1 of the first answer
    fact_compared: int = 0


@dataclass
class JudgeRow:
    """One judge principle (or teacher, or score): comparisons, consistency, margins, ties."""

    comparisons: int = 0
    ordered: int = 0
    consistent: int = 0
    ties: int = 0
    margin: float = 0.0  # sum of |2p - 1|


@dataclass
class Lineage:
    records: int = 0
    sources: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)  # "stage: reason"
    candidates: int = 0
    initial_words: Counter[int] = field(default_factory=Counter)  # words -> answers
    final_words: Counter[int] = field(default_factory=Counter)  # candidates revised at least once
    principles: dict[str, PrincipleRow] = field(default_factory=lambda: defaultdict(PrincipleRow))
    judged: int = 0
    margins: Counter[float] = field(default_factory=Counter)
    consistency: Counter[str] = field(default_factory=Counter)
    verdicts: Counter[str] = field(default_factory=Counter)  # by source
    first_shown_won: int = 0  # readable verdicts that preferred the option shown first, as (A)
    readable_verdicts: int = 0
    judge_rows: dict[str, JudgeRow] = field(default_factory=lambda: defaultdict(JudgeRow))
    fact_checked: int = 0
    precision: dict[str, Counter[float]] = field(default_factory=lambda: defaultdict(Counter))  # by text kind
    f1: dict[str, Counter[float]] = field(default_factory=lambda: defaultdict(Counter))
    claims: Counter[str] = field(default_factory=Counter)
    idk: int = 0
    p_ik: Counter[float] = field(default_factory=Counter)
    idk_labels: Counter[str] = field(default_factory=Counter)
    samples: list[Record] = field(default_factory=list)
    dropped_samples: list[Record] = field(default_factory=list)

    def add(self, rec: Record) -> None:
        self.records += 1
        self.sources[rec.source] += 1
        if rec.dropped:
            self.dropped[f"{rec.dropped.stage}: {rec.dropped.reason}"] += 1
        revised_under: dict[int, set[str]] = {}
        for cand in rec.candidates:
            self.candidates += 1
            self.initial_words[len(cand.answer.split())] += 1
            if cand.rounds:
                self.final_words[len(cand.final.split())] += 1
                revised_under[cand.index] = {r.principle_id for r in cand.rounds}
            for rnd in cand.rounds:
                row = self.principles[rnd.principle_id]
                row.drawn += 1
                row.noop += rnd.noop
        if rec.judgement:
            self._judgement(rec, revised_under)
        if rec.facts:
            self._facts(rec, revised_under)
        if rec.idk:
            self.idk += 1
            self.p_ik[round(rec.idk.p_ik, 3)] += 1
            self.idk_labels[rec.idk.label] += 1

    def _judgement(self, rec: Record, revised_under: dict[int, set[str]]) -> None:
        j = rec.judgement
        self.judged += 1
        for c in j.comparisons:
            for v in c.verdicts:
                self.verdicts[v.source] += 1
                if v.p_a is not None and abs(v.p_a - 0.5) >= TIE:
                    self.readable_verdicts += 1
                    self.first_shown_won += v.p_a > 0.5
            row = self.judge_rows[c.principle_id]
            if c.p_i is None:
                self.consistency["unreadable"] += 1
                continue
            margin = abs(2 * c.p_i - 1)
            self.margins[round(margin, 3)] += 1
            row.comparisons += 1
            row.margin += margin
            row.ties += margin < 2 * TIE
            if c.consistent is not None:
                row.ordered += 1
                row.consistent += c.consistent
            self.consistency[
                {True: "consistent", False: "inconsistent", None: "one order (teacher, score)"}[c.consistent]
            ] += 1
            a, b = j.options[c.i], j.options[c.j]
            if a.candidate == b.candidate and {a.kind, b.kind} == {"initial", "final"}:
                p_final = c.p_i if a.kind == "final" else 1 - c.p_i
                for pid in revised_under.get(a.candidate, ()):
                    prow = self.principles[pid]
                    prow.judged += 1
                    prow.p_revision += p_final
                    prow.revision_won += p_final > 0.5

    def _facts(self, rec: Record, revised_under: dict[int, set[str]]) -> None:
        self.fact_checked += 1
        by_text: dict[tuple[int, str], float] = {}
        for check in rec.facts.checks:
            by_text[(check.candidate, check.kind)] = check.f1
            if check.precision is not None:
                self.precision[check.kind][round(check.precision, 3)] += 1
            self.f1[check.kind][round(check.f1, 3)] += 1
            for claim in check.claims:
                self.claims[claim.verdict or "unreadable"] += 1
        for cand, pids in revised_under.items():
            first, last = by_text.get((cand, "initial")), by_text.get((cand, "revised"), by_text.get((cand, "final")))
            if first is not None and last is not None:
                for pid in pids:
                    self.principles[pid].fact_delta += last - first
                    self.principles[pid].fact_compared += 1


def _keep(pool: list[Record], size: int, seen: int, rec: Record, rng: random.Random) -> None:
    """Reservoir sampling: after n items, each is in the pool with probability size/n."""
    if len(pool) < size:
        pool.append(rec)
    elif (k := rng.randrange(seen)) < size:
        pool[k] = rec


def read_lineage(run: RunDir, seed: int = 0) -> Lineage | None:
    """Every record of the run folded into a Lineage, or None before the run has finished."""
    if not run.has_lineage:
        return None
    out, rng = Lineage(), random.Random(seed)
    kept = dropped = 0
    for rec in run.lineage():
        out.add(rec)
        if rec.dropped:
            dropped += 1
            _keep(out.dropped_samples, DROPPED_SAMPLES, dropped, rec, rng)
        else:
            kept += 1
            _keep(out.samples, SAMPLES, kept, rec, rng)
    return out
