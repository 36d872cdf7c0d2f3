"""`factory judge-check`: a judge's accuracy and position consistency on a small labelled set (pairs
with a clearly better answer), before paying for a run. The judge stage itself does the judging."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from factory.config import ROOT, JudgeConfig, cache_root, load_config
from factory.constitution import Constitution, Principle
from factory.engine.calllog import CallLog
from factory.engine.pipeline import Overrides, Pipeline
from factory.engine.prices import Budget
from factory.engine.stats import Stats
from factory.errors import InputError
from factory.records import Candidate, Record
from factory.stages import judge as judge_stage
from factory.stages.judge import JudgeStage
from factory.yamlfile import jsonl_lines, read_text

DEFAULT_SET = ROOT / "evals" / "judge_check.jsonl"


class LabelledPair(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str
    better: str
    worse: str
    criterion: str


def read_pairs(path: Path) -> list[LabelledPair]:
    pairs = []
    for n, line in jsonl_lines(read_text(path)):
        try:
            pairs.append(LabelledPair.model_validate_json(line))
        except ValueError as e:
            raise InputError(path, f"not a labelled pair ({{prompt, better, worse, criterion}}): {e}", line=n) from None
    if not pairs:
        raise InputError(path, "no pairs in the file")
    return pairs


def judge_check(model: str, pairs_path: Path = DEFAULT_SET, *, config: Path | None = None,
                method: str | None = None, samples: int | None = None) -> dict:
    """Judge every pair in both orders with the pipeline's judge settings; return the report."""
    pairs = read_pairs(pairs_path)
    cfg = load_config(config)
    pipe = Pipeline.prepare(cfg, Overrides(model=model), needs_seeds=False)
    base = pipe.cfg.stages.judge or JudgeConfig()
    update: dict = {"compare": "initial"}
    if method:
        update["method"] = method
        if method == "cot" and base.max_tokens < 64:
            update["max_tokens"] = 400
    if samples:
        update["samples"] = samples
        if samples > 1 and base.temperature == 0:
            update["temperature"] = 1.0
    jcfg = base.without_teachers(**update)
    template = judge_stage.template_for(pipe.cfg.path(pipe.cfg.prompts_dir), jcfg)
    pipe.load_models()
    criteria = sorted({p.criterion for p in pairs})
    stages = {c: JudgeStage(jcfg, _constitution(c, i), template, model, pipe.cfg.seed) for i, c in enumerate(criteria)}
    records = []
    for p in pairs:
        rec = Record.new(p.prompt, "file")
        rec.candidates = [Candidate(index=0, answer=p.better, finish_reason="stop"),
                          Candidate(index=1, answer=p.worse, finish_reason="stop")]
        records.append(rec)
    stats = Stats(["judge"])
    cache_root().mkdir(parents=True, exist_ok=True)
    log = CallLog(cache_root() / "judge-check-calls.sqlite")

    async def main() -> None:
        caller = pipe.caller(log, stats, Budget(None))
        try:
            await asyncio.gather(*(stages[p.criterion].process(r, caller) for p, r in zip(pairs, records)))
        finally:
            await pipe.aclose()
            log.close()

    asyncio.run(main())
    return summarise(model, jcfg, records, stats)


def _constitution(criterion: str, i: int) -> Constitution:
    principle = Principle(id=f"criterion-{i}", critique="-", revision="-", judge=criterion)
    return Constitution(name="judge-check", version="1", description="one judge criterion", principles=[principle])


def summarise(model: str, cfg: JudgeConfig, records: list[Record], stats: Stats) -> dict:
    """Accuracy (P(better) > 0.5 after both orders), per-order accuracy, consistency, ties, margin."""
    p_better, first, second, consistent, unreadable, flipped = [], [], [], [], 0, 0
    for rec in records:
        comps = rec.judgement.comparisons if rec.judgement else []
        ps = [c.p_i for c in comps if c.p_i is not None]
        p_better.append(sum(ps) / len(ps) if ps else None)
        for c in comps:
            if c.consistent is not None:
                consistent.append(c.consistent)
            if c.by == "score" and c.p_i is not None:
                flipped += c.p_i < 0.5
            if len(c.verdicts) == 2:
                ab, ba = c.verdicts
                unreadable += (ab.p_a is None) + (ba.p_a is None)
                if ab.p_a is not None:
                    first.append(ab.p_a > 0.5)
                    flipped += ab.p_a < 0.5
                if ba.p_a is not None:
                    second.append(ba.p_a < 0.5)
                    flipped += ba.p_a > 0.5
    labelled = [p for p in p_better if p is not None]

    def rate(xs: list) -> float | None:
        return round(sum(xs) / len(xs), 4) if xs else None

    st = stats["judge"]
    return {
        "model": model,
        "method": cfg.method,
        "pairs": len(records),
        "labelled": len(labelled),
        "accuracy": rate([p > 0.5 for p in labelled]),
        "accuracy_better_shown_first": rate(first),
        "accuracy_better_shown_second": rate(second),
        "position_consistency": rate(consistent),
        "tie_rate": rate([abs(p - 0.5) < 0.01 for p in labelled]),
        "mean_p_better": round(sum(labelled) / len(labelled), 4) if labelled else None,
        "unreadable_verdicts": unreadable + st.counters["unparseable_score"],
        "flipped_verdicts": flipped,  # readable verdicts (or score comparisons) for the worse answer
        "calls": st.calls,
        "cached_calls": st.cached_calls,
        "cost_usd": round(st.cost, 6),
        "verdict_sources": {k: v for k, v in sorted(st.counters.items()) if k.startswith(("verdict:", "score:"))},
    }


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2)
