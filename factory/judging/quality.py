"""The judge quality report: how far to trust a run's preference labels, per run in stats.json."""

from __future__ import annotations

from collections import defaultdict

from factory.records import Judgement

TIE = 0.01  # |P - 0.5| below this: the judge expressed no preference


class JudgeReport:
    """Accumulates over records; `to_dict` gives the rates. Rates are None where nothing was measured."""

    def __init__(self) -> None:
        self.judged = self.comparisons = self.ordered = self.consistent = self.ties = 0
        self.margin = 0.0  # sum of |2p - 1| over the readable comparisons (a sum: memory stays flat)
        self.multi = self.agree = 0  # pairs judged under 2+ principles, and those whose principles agreed
        self.revision_pairs = self.revision_won = 0
        self.pairs = 0
        self.unreadable = 0
        self.by: dict[str, int] = defaultdict(int)

    def add(self, j: Judgement) -> None:
        self.judged += 1
        self.pairs += len(j.pairs)
        groups: dict[tuple[int, int], list[float]] = defaultdict(list)
        for c in j.comparisons:
            self.by[c.principle_id if c.by == "teacher" else c.by] += 1  # each teacher by name
            self.unreadable += sum(v.p_a is None for v in c.verdicts)
            if c.p_i is None or c.by == "quality":  # the filters decided, not the judge
                continue
            self.comparisons += 1
            self.margin += abs(2 * c.p_i - 1)
            self.ties += abs(c.p_i - 0.5) < TIE
            if c.consistent is not None:
                self.ordered += 1
                self.consistent += c.consistent
            if c.by == "judge":
                groups[(c.i, c.j)].append(c.p_i)
            a, b = j.options[c.i], j.options[c.j]
            if a.candidate == b.candidate and {a.kind, b.kind} == {"initial", "final"}:
                self.revision_pairs += 1
                p_final = c.p_i if a.kind == "final" else 1 - c.p_i
                self.revision_won += p_final > 0.5
        for ps in groups.values():
            if len(ps) > 1:
                self.multi += 1
                self.agree += all(p > 0.5 for p in ps) or all(p < 0.5 for p in ps)

    def to_dict(self) -> dict:
        def rate(n: int, d: int) -> float | None:
            return round(n / d, 4) if d else None

        return {
            "records": self.judged,
            "comparisons": self.comparisons,
            "comparisons_by": dict(sorted(self.by.items())),
            "unreadable_verdicts": self.unreadable,
            "position_consistency": rate(self.consistent, self.ordered),
            "tie_rate": rate(self.ties, self.comparisons),
            "mean_margin": round(self.margin / self.comparisons, 4) if self.comparisons else None,
            "principle_agreement": rate(self.agree, self.multi),
            "revision_preferred": rate(self.revision_won, self.revision_pairs),
            "pairs": self.pairs,
        }
