"""Testing: every candidate principle judges the held-out pairs alone, through the judge stage.

Each held-out pair becomes a record with two candidates (chosen first); the judge stage compares
them in both orders under the candidate as its only principle and gives P(chosen better), a soft
label from the A/B log-probs (or parsed verdicts). From those:

- agreement: the mean of P(chosen) over all held-out pairs (an unjudged pair counts 0.5). Chance
  is 0.5 whatever the principle; a principle that never applies scores 0.5.
- coverage: the share of pairs where the principle is decisive: both orders pick the same answer
  and |P - 0.5| >= `decisive` (a principle that does not apply leaves the judge guessing, which
  both orders cancel).
- accuracy when decisive: the share of decisive pairs where it picks the chosen answer.
- interval: 95% normal interval of the agreement with a cluster-robust variance, clustered by
  prompt (pairs of one prompt are not independent).

Kept: agreement >= 0.5 + margin and the interval's low end above 0.5. Contradicted: the mirror
image. Two kept principles that decide the same pairs the same way (90% of the pairs either is
decisive on, at least 3) are one principle in two wordings: the lower-ranked merges into the other.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

from factory.config import JudgeConfig
from factory.constitution import Constitution, Principle
from factory.discover.prefs import PrefPair
from factory.engine.caller import Caller
from factory.errors import ModelCallError
from factory.prompts import Template
from factory.records import Candidate as Answer
from factory.records import Record
from factory.stages.judge import JudgeStage

SAME_DECISIONS, MIN_SHARED = 0.9, 3


@dataclass
class Candidate:
    id: str
    judge: str  # the judge text tested: the proposed principle, or a seed principle's `judge`
    origin: str  # "proposed" or "seed"
    support: int = 0  # proposal pairs that proposed it
    wordings: list[str] = field(default_factory=list)
    seed: Principle | None = None


@dataclass
class Result:
    candidate: Candidate
    ps: list[float | None]  # P(chosen better) per held-out pair; None: unjudged
    decisive: list[bool]
    agreement: float
    coverage: float
    accuracy_decisive: float | None
    ci95: tuple[float, float]
    status: str = "not supported"  # kept, not supported, contradicted, redundant
    merged_into: str | None = None
    merged: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        c = self.candidate
        return {"id": c.id, "judge": c.judge, "origin": c.origin, "support": c.support, "wordings": c.wordings,
                "status": self.status, "agreement": self.agreement, "ci95": list(self.ci95),
                "coverage": self.coverage, "accuracy_when_decisive": self.accuracy_decisive,
                "judged": sum(p is not None for p in self.ps), "merged_into": self.merged_into, "merged": self.merged}


def clustered_interval(values: list[float], groups: list[str], z: float = 1.96) -> tuple[float, float]:
    """Mean +- z x cluster-robust standard error (CR1: G/(G-1) x sum of squared cluster residual
    sums / n^2). With fewer than 2 clusters nothing is known: (0, 1).

    Not `factory.commands.evaluate.clustered_interval`: that one floors its bootstrap at a Wilson interval with
    one trial per prompt, right for 0/1 win outcomes but far too wide for soft agreements, most of
    them exactly 0.5 (a principle that does not apply): a rule that decides a third of the pairs
    perfectly (agreement 0.63 over 24 prompts) would never be kept."""
    n, clusters = len(values), sorted(set(groups))
    if n == 0 or len(clusters) < 2:
        return 0.0, 1.0
    mean = sum(values) / n
    sums = dict.fromkeys(clusters, 0.0)
    for v, g in zip(values, groups, strict=True):
        sums[g] += v - mean
    g = len(clusters)
    half = z * math.sqrt(g / (g - 1) * sum(s * s for s in sums.values()) / (n * n))
    return round(max(0.0, mean - half), 4), round(min(1.0, mean + half), 4)


def judge_constitution(c: Candidate) -> Constitution:
    """The candidate as the only principle of a constitution (critique and revision unused by the judge)."""
    principle = Principle(id=c.id, critique="-", revision="-", judge=c.judge)
    return Constitution(name="discover", version="1", description="one candidate principle", principles=[principle])


def records(pairs: list[PrefPair]) -> list[Record]:
    out = []
    for p in pairs:
        rec = Record.new(p.prompt, "file", where=p.where)
        rec.candidates = [Answer(index=0, answer=p.chosen, finish_reason="stop"),
                          Answer(index=1, answer=p.rejected, finish_reason="stop")]
        out.append(rec)
    return out


async def judge_all(candidates: list[Candidate], pairs: list[PrefPair], caller: Caller, cfg: JudgeConfig,
                    template: Template, model: str, seed: int) -> list[list[Record]]:
    """Every candidate over every held-out pair, all calls in flight together (the endpoint limits them)."""
    cfg = cfg.without_teachers(compare="initial", principles=1)
    stages = [JudgeStage(cfg, judge_constitution(c), template, model, seed) for c in candidates]
    judged = [records(pairs) for _ in candidates]

    async def one(stage: JudgeStage, rec: Record) -> None:
        try:
            await stage.process(rec, caller)
        except ModelCallError as e:
            if e.fatal:
                raise
            caller.stats["judge"].drop("call_failed")  # the pair counts as unjudged (0.5)
            rec.judgement = None

    await asyncio.gather(*(one(stage, rec) for stage, recs in zip(stages, judged) for rec in recs))
    return judged


def measure(candidate: Candidate, judged: list[Record], decisive: float) -> Result:
    ps, flags = [], []
    for rec in judged:
        comps = [c for c in (rec.judgement.comparisons if rec.judgement else []) if c.p_i is not None]
        p = sum(c.p_i for c in comps) / len(comps) if comps else None
        ps.append(p)
        flags.append(p is not None and abs(p - 0.5) >= decisive and all(c.consistent is not False for c in comps))
    values = [0.5 if p is None else p for p in ps]
    n = len(values)
    right = [p > 0.5 for p, d in zip(ps, flags) if d]
    return Result(candidate, ps, flags, agreement=round(sum(values) / n, 4), coverage=round(sum(flags) / n, 4),
                  accuracy_decisive=round(sum(right) / len(right), 4) if right else None,
                  ci95=clustered_interval(values, [r.id for r in judged]))


def decide(results: list[Result], margin: float) -> list[Result]:
    """Statuses set; results ranked (kept first, by agreement, then coverage); redundant ones merged."""
    for r in results:
        if r.agreement >= 0.5 + margin and r.ci95[0] > 0.5:
            r.status = "kept"
        elif r.agreement <= 0.5 - margin and r.ci95[1] < 0.5:
            r.status = "contradicted"
    order = {"kept": 0, "not supported": 1, "contradicted": 2}
    results = sorted(results, key=lambda r: (order[r.status], -r.agreement, -r.coverage))
    kept: list[Result] = []
    for r in (x for x in results if x.status == "kept"):
        twin = next((k for k in kept if same_decisions(k, r)), None)
        if twin is None:
            kept.append(r)
        else:
            r.status, r.merged_into = "redundant", twin.candidate.id
            twin.merged.append(r.candidate.id)
    return results


def same_decisions(a: Result, b: Result) -> bool:
    either = [i for i, (x, y) in enumerate(zip(a.decisive, b.decisive)) if x or y]
    same = [i for i in either if a.decisive[i] and b.decisive[i] and (a.ps[i] > 0.5) == (b.ps[i] > 0.5)]
    return len(same) >= MIN_SHARED and len(same) >= SAME_DECISIONS * len(either)
