"""`factory eval`: did training move the model toward the constitution?

Both models answer the same held-out prompts (a run's test split by default); the judge compares
each pair of answers in both orders under principles drawn from the constitution (or a classifier
teacher scores them), exactly as the judge stage does. Reports the win rate of the model over the
baseline, overall, per prompt kind and per principle, the over-refusal rate on benign prompts, and,
with a classifier judge, each model's scores per prompt kind.

Intervals are clustered by prompt: the samples of one prompt (--samples) and its principles are not
independent trials, so the 95% interval is a seeded percentile bootstrap over prompts (all of a
prompt's outcomes resampled together), widened to at least the Wilson interval with n = prompts (a
bootstrap of a few or unanimous prompts has no width). A classifier judge scores only the prompts
its rule (the config's first judge teacher's mentions/regex) applies to; the others are counted as
`not_applicable` and left out of the win rates.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from factory.config import JudgeConfig, PipelineConfig, TeacherConfig, load_config
from factory.engine.calllog import CallLog
from factory.engine.pipeline import Overrides, Pipeline
from factory.engine.prices import Budget
from factory.engine.rundir import RunDir, create_run_dir, now, write_json
from factory.engine.stats import Stats
from factory.errors import FactoryError
from factory.export.writer import SPLITS_FILE, split_of
from factory.hygiene.clean import REFUSAL
from factory.inputs import read_prompts
from factory.judging import AppliesWhen, Scorer, load_scorer
from factory.judging.quality import TIE
from factory.models import load_model
from factory.records import Candidate, Record
from factory.stages import judge as judge_stage
from factory.stages.answer import AnswerStage
from factory.stages.judge import JudgeStage

SCORER_PREFIXES = ("vader:", "refusal:", "hf:")


def held_out(source: Path, limit: int | None, split: str = "test") -> list[Record]:
    """Prompts to evaluate on: a JSONL file, or a run directory's test split (its metadata kept).
    `split="train"`: the run's training prompts instead (`factory train grpo|rloo`)."""
    if not source.is_dir():
        return read_prompts(source, "file", limit)
    run = RunDir.open(source)
    if not run.has_lineage:
        raise FactoryError(f"{source}: not a finished run directory (status {run.status!r}); finish it first "
                           f"(factory run --resume {source})")
    fraction = run.manifest["config"]["stages"]["export"]["test_fraction"]
    splits = source / SPLITS_FILE  # the prompts the export moved so that neither split is empty
    moved = json.loads(splits.read_text())["moved"] if splits.is_file() else {}
    out = []
    for rec in run.lineage():
        if split_of(rec.id, fraction, moved) == split:
            out.append(Record.dialogue(rec.prompt, "file", system=rec.system, history=rec.history, **rec.metadata))
    if not out:
        raise FactoryError(f"{source}: its {split} split holds no prompts; pass a prompts FILE.jsonl instead")
    return out[:limit]


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (ties count as half a win)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)


BOOTSTRAP = 2000  # resamples of the prompts
BOOTSTRAP_SEED = 0


def clustered_interval(groups: list[list[float]], seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """95% interval for the mean outcome when each prompt contributes a group of correlated outcomes."""
    groups = [g for g in groups if g]
    if not groups:
        return 0.0, 1.0
    sums, sizes = np.array([sum(g) for g in groups]), np.array([len(g) for g in groups])
    picks = np.random.default_rng(seed).integers(0, len(groups), size=(BOOTSTRAP, len(groups)))
    means = sums[picks].sum(axis=1) / sizes[picks].sum(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    w_lo, w_hi = wilson(sums.sum() / sizes.sum() * len(groups), len(groups))
    return round(float(min(lo, w_lo)), 4), round(float(max(hi, w_hi)), 4)


def outcome(p: float | None) -> float:
    """A win counts 1, a tie (or no verdict) 0.5, a loss 0."""
    return 0.5 if p is None or abs(p - 0.5) < TIE else float(p > 0.5)


def win_rate(ps: list[float | None], prompts: list[str] | None = None) -> dict:
    """Outcomes `ps`, each from the prompt of the same position in `prompts` (default: one each)."""
    prompts = prompts if prompts is not None else [str(i) for i in range(len(ps))]
    groups: dict[str, list[float]] = defaultdict(list)
    for p, prompt in zip(ps, prompts, strict=True):
        groups[prompt].append(outcome(p))
    wins = sum(outcome(p) for p in ps)
    return {"n": len(ps), "prompts": len(groups), "win_rate": round(wins / len(ps), 4) if ps else None,
            "ci95": clustered_interval(list(groups.values())),
            "wins": sum(outcome(p) == 1 for p in ps), "ties": sum(outcome(p) == 0.5 for p in ps),
            "losses": sum(outcome(p) == 0 for p in ps)}


def score_summary(scores: list[float]) -> dict:
    n = len(scores)
    return {"mean": round(sum(scores) / n, 4) if n else None,
            "share_above_0": round(sum(s > 0 for s in scores) / n, 4) if n else None, "n": n}


def summarise(model: str, baseline: str, judge: str, judged: list[Record], benign: set[str],
              scorer: Scorer | None = None) -> dict:
    """Win rate of option 0 (the model) over option 1 (the baseline), overall and per principle;
    over-refusal on benign prompts; teacher scores per prompt kind."""
    overall: list[float | None] = []
    ids: list[str] = []
    per_principle: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    per_kind: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    refusals = {"model": 0, "baseline": 0}
    n_benign, not_applicable = 0, 0
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"model": [], "baseline": []})
    for rec in judged:
        j = rec.judgement
        texts = {"model": rec.candidates[0].answer, "baseline": rec.candidates[1].answer}
        kind = str(rec.metadata.get("kind", "unlabelled"))
        if j is None:  # a classifier judge whose rule does not apply to this prompt
            not_applicable += 1
        else:
            comps = [c for c in j.comparisons if c.p_i is not None]
            ps = [c.p_i if c.i == 0 else 1 - c.p_i for c in comps]
            overall.append(sum(ps) / len(ps) if ps else None)  # None: identical answers or no verdict (a tie)
            ids.append(rec.id)
            per_kind[kind][0].append(overall[-1])
            per_kind[kind][1].append(rec.id)
            for c, p in zip(comps, ps):
                per_principle[c.principle_id][0].append(p)
                per_principle[c.principle_id][1].append(rec.id)
        if kind in benign:
            n_benign += 1
            for who, text in texts.items():
                refusals[who] += bool(REFUSAL.match(text))
        if scorer is not None:  # every answer, identical ones too (the judge skips a pair of equal texts)
            for who, score in zip(texts, scorer.score(list(texts.values())), strict=True):
                scores[kind][who].append(score)
    report = {"model": model, "baseline": baseline, "judge": judge, "prompts": len({r.id for r in judged}),
              **win_rate(overall, ids), "not_applicable": not_applicable,
              "by_kind": {kind: win_rate(*v) for kind, v in sorted(per_kind.items())},
              "per_principle": {pid: win_rate(*v) for pid, v in sorted(per_principle.items())},
              "over_refusal": {"benign_answers": n_benign,
                               **{who: round(n / n_benign, 4) if n_benign else None for who, n in refusals.items()}}}
    if scores:
        report["scores_by_kind"] = {kind: {who: score_summary(v) for who, v in by.items()}
                                    for kind, by in sorted(scores.items())}
    return report


def classifier_rule(teacher: TeacherConfig | None) -> Callable[[Record], bool] | None:
    """Where a classifier judge applies: the config's teacher rule (mentions or regex, on the prompt or
    on either answer); None where it has none (it applies to every prompt)."""
    if teacher is None or (not teacher.mentions and teacher.regex is None):
        return None
    when = AppliesWhen(mentions=teacher.mentions, regex=teacher.regex)
    if teacher.where == "prompt":
        return lambda rec: when.applies(rec.prompt)
    return lambda rec: any(when.applies(c.answer) for c in rec.candidates)


def evaluate(model: str, baseline: str, source: Path, judge: str, out: Path | None, *,
             config: Path | PipelineConfig | None = None, limit: int | None = None, benign: set[str] | None = None,
             samples: int = 1, cache_dir: Path | None = None) -> tuple[dict, Path]:
    """(the report, the folder it was written to: `out`, or a new one in outputs/ once the inputs are valid).
    `cache_dir`: a shared call cache (as `factory run --cache-dir`), read and written."""
    cfg = config if isinstance(config, PipelineConfig) else load_config(config)
    pipe = Pipeline.prepare(cfg, Overrides(model=model), needs_seeds=False)
    records = held_out(source, limit)
    teacher = load_scorer(judge) if judge.startswith(SCORER_PREFIXES) else None
    rules = cfg.stages.judge.all_teachers if cfg.stages.judge else []
    rule = classifier_rule(rules[0] if rules else None) if teacher else None
    jcfg = (cfg.stages.judge or JudgeConfig()).without_teachers(
        compare="initial", model=None, teacher=TeacherConfig(scorer=judge) if teacher else None)
    template = judge_stage.template_for(cfg.path(cfg.prompts_dir), jcfg)
    judge_model = baseline if teacher else judge  # a teacher applies to every answer: no model call is made
    for spec in {model, baseline, judge_model}:
        pipe.models[spec] = load_model(spec)
    answer_cfg = cfg.stages.answer.model_copy(update={"candidates": samples})
    answerers = {spec: AnswerStage(answer_cfg, pipe.templates["answer"], spec, cfg.seed) for spec in (model, baseline)}
    stage = JudgeStage(jcfg, pipe.constitution, template, judge_model, cfg.seed, [teacher] if teacher else [])
    stats = Stats(["answer", "judge"])
    out = create_run_dir(out)  # only now: bad input leaves nothing behind
    log = CallLog(out / "calls.sqlite")
    shared = None
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        shared = CallLog(Path(cache_dir) / "calls.sqlite")

    async def one(rec: Record, caller) -> list[Record]:
        """Sample k of the model's answers is judged against sample k of the baseline's (same seed)."""
        answers: dict[str, dict[int, str]] = {}
        for spec, answerer in answerers.items():
            r = Record.dialogue(rec.prompt, "file", system=rec.system, history=rec.history)  # a dialogue stays one
            await answerer.process(r, caller)
            answers[spec] = {c.index: c.answer for c in r.candidates}
        out = []
        for k in range(samples):
            judged = rec.model_copy(deep=True)
            judged.metadata["sample"] = k
            judged.candidates = [Candidate(index=i, answer=answers[spec].get(k, ""), finish_reason="stop")
                                 for i, spec in enumerate((model, baseline))]
            if rule is None or rule(judged):
                await stage.process(judged, caller)
            out.append(judged)
        return out

    async def main() -> list[Record]:
        caller = pipe.caller(log, stats, Budget(None), shared=shared)
        try:
            return [j for js in await asyncio.gather(*(one(r, caller) for r in records)) for j in js]
        finally:
            await pipe.aclose()
            for each in (log, shared):
                if each is not None:
                    each.close()

    judged = asyncio.run(main())
    benign = benign if benign is not None else set(cfg.stages.export.clean.benign_kinds)
    report = summarise(model, baseline, judge, judged, benign, teacher) | {"samples_per_prompt": samples, "finished": now(),
                                                                  "source": str(source)}
    with (out / "answers.jsonl").open("w") as f:
        for rec in judged:
            f.write(rec.model_dump_json() + "\n")
    write_json(out / "eval.json", report)
    return report, out
