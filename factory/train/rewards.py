"""The reward of `factory train grpo|rloo`: one async function per declared term, each a thin adapter
over the factory's own feedback code (no second implementation):

    teacher  judging.teachers: load_scorer + AppliesWhen (neutral value where the rule does not apply);
             anchored: stages.answer.AnswerStage samples the reference model, as the judge's anchor does
    judge    stages.judge.JudgeStage against the reference model's answer (stages.answer.AnswerStage)
    idk      stages.idk: match_reference (or the IDK judge) + a decline check
    facts    stages.factcheck.FactCheckStage.check, scored by facts.metric_of

Every model or search call goes through one Caller (calls.sqlite in the output folder, rate limits,
retries, cost, --max-cost). TRL awaits the functions on its own event loop, all terms concurrently.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass, field

from factory.config import FactCheckConfig, IdkConfig, JudgeConfig
from factory.engine.caller import Caller
from factory.engine.pipeline import Pipeline
from factory.errors import FactoryError
from factory.hygiene.clean import REFUSAL
from factory.judging import AppliesWhen, load_scorer
from factory.judging.facts import metric_of
from factory.models import load_model
from factory.records import Candidate, Record
from factory.stages import factcheck, idk, judge
from factory.stages.answer import AnswerStage
from factory.stages.factcheck import FactCheckStage
from factory.stages.idk import IdkStage, match_reference, normalise_answer
from factory.stages.judge import JudgeStage
from factory.train.rl_config import FactsTerm, IdkTerm, JudgeTerm, RLConfig, TeacherTerm, term_names

_IDK = re.compile(r"\b(?:i (?:do not|don't|dont) know|i'?m not (?:sure|certain)|i (?:can ?not|can't) (?:say|recall|answer)|"
                  r"no idea|not sure)\b", re.IGNORECASE)


def text_of(completion) -> str:
    """A TRL completion (conversational: [{"role": "assistant", "content": ...}], or a string) as text."""
    if isinstance(completion, str):
        return completion.strip()
    return "".join(m.get("content") or "" for m in completion if m.get("role") == "assistant").strip()


def is_decline(text: str, declines: list[str]) -> bool:
    """An honest "I don't know": one of the decline phrasings, a refusal, or a plain admission."""
    said = f" {normalise_answer(text)} "
    return bool(REFUSAL.match(text) or _IDK.search(text)
                or any(f" {normalise_answer(d)} " in said for d in declines if normalise_answer(d)))


@dataclass
class Rewards:
    """The terms' functions, the models they call and the records (prompt and metadata) by key."""

    pipe: Pipeline
    rl: RLConfig
    records: dict[str, Record]
    names: list[str]
    weights: list[float]
    funcs: list = field(default_factory=list)
    references: dict[str, str] = field(default_factory=dict)
    caller: Caller | None = None
    outcomes: dict[str, dict[str, float]] = field(default_factory=dict)  # per idk term: its value per outcome


def build(cfg: RLConfig, pipe: Pipeline, records: dict[str, Record], policy_spec: str) -> Rewards:
    """The functions (models are loaded here, after every input was checked)."""
    r = Rewards(pipe, cfg, records, term_names(cfg.rewards), [t.weight for t in cfg.rewards])
    for term, name in zip(cfg.rewards, r.names, strict=True):
        maker = {TeacherTerm: _teacher, JudgeTerm: _judge, IdkTerm: _idk, FactsTerm: _facts}[type(term)]
        fn = maker(term, r, policy_spec)
        fn.__name__ = name  # TRL names the metric `rewards/<name>/mean` after it
        r.funcs.append(fn)
        if isinstance(term, IdkTerm):
            r.outcomes[name] = {"correct": term.correct, "decline": term.decline, "wrong": term.wrong}
    return r


def _model(r: Rewards, spec: str) -> str:
    if spec not in r.pipe.models:
        r.pipe.models[spec] = load_model(spec)
    return spec


async def settled(calls) -> list:
    """Await every sample's reward, then raise the first error if any. A plain gather raises at the first
    error (a call that would pass --max-cost) while other samples' calls are still in flight: billed, but
    never in calls.sqlite. Here every sample finishes first. (A stage that asks in parallel inside one
    sample, the judge's two orders, can still leave a sibling call unlogged: a known gap.)"""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def _caller(r: Rewards) -> Caller:
    if r.caller is None:
        raise FactoryError("reward functions were called before the Caller was set")
    return r.caller


def _teacher(term: TeacherTerm, r: Rewards, _: str):
    scorer = load_scorer(term.scorer)
    when = None if term.everywhere else AppliesWhen(mentions=term.mentions, regex=term.regex)
    level = _anchor_levels(term, r, scorer) if term.anchor else None

    async def reward(prompts, completions, key, **_kw) -> list[float | None]:
        texts = [text_of(c) for c in completions]
        tested = texts if term.where == "answer" else [r.records[k].prompt for k in key]
        keep = [i for i, t in enumerate(tested) if when is None or when.applies(t)]
        scores = await asyncio.to_thread(scorer.score, [texts[i] for i in keep]) if keep else []
        levels = await settled(level(key[i]) for i in keep) if level else [None] * len(keep)
        out: list[float | None] = [term.neutral] * len(texts)
        for i, s, at in zip(keep, scores, levels, strict=True):
            out[i] = float(s) if level is None else None if at is None else term.anchor.held(float(s), at)
        return out

    return reward


def _anchor_levels(term: TeacherTerm, r: Rewards, scorer):
    """Prompt key -> the mean score of the anchor model's answers to it (made once, cached here and in
    calls.sqlite; None where it wrote nothing: that sample is left out of the reward). The answers are
    sampled as the rollouts are (their length and temperature), so the two are scored alike."""
    assert term.anchor is not None
    cfg, rl = r.pipe.cfg, r.rl
    sampling = cfg.stages.answer.model_copy(update={"max_tokens": rl.max_completion_length,
                                                    "temperature": rl.temperature, "top_p": rl.top_p})
    stage = AnswerStage(sampling, r.pipe.templates["answer"], _model(r, term.anchor.model), cfg.seed)
    levels: dict[str, float | None] = {}
    locks: dict[str, asyncio.Lock] = {}

    async def level(k: str) -> float | None:
        async with locks.setdefault(k, asyncio.Lock()):
            if k not in levels:
                rec = Record.new(r.records[k].prompt, "file")
                refs = [c.answer for c in await stage.sample(rec, _caller(r), term.anchor.samples, tag="anchor")
                        if c.answer]
                levels[k] = sum(await asyncio.to_thread(scorer.score, refs)) / len(refs) if refs else None
        return levels[k]

    return level


def _judge(term: JudgeTerm, r: Rewards, policy_spec: str):
    cfg = r.pipe.cfg
    base = cfg.stages.judge or JudgeConfig()
    jcfg = base.without_teachers(compare="initial", model=None)
    template = judge.template_for(cfg.path(cfg.prompts_dir), jcfg)
    judge_spec = _model(r, term.model or (cfg.model_for(cfg.stages.judge) if cfg.stages.judge else cfg.model))
    stage = JudgeStage(jcfg, r.pipe.constitution, template, judge_spec, cfg.seed)
    answer_cfg = cfg.stages.answer.model_copy(update={"candidates": 1})
    answerer = AnswerStage(answer_cfg, r.pipe.templates["answer"], _model(r, term.reference or policy_spec), cfg.seed)
    locks: dict[str, asyncio.Lock] = {}

    async def reference(k: str) -> str:
        """The reference model's answer to prompt K: made once (cached here and in calls.sqlite)."""
        async with locks.setdefault(k, asyncio.Lock()):
            if k not in r.references:
                rec = Record.new(r.records[k].prompt, "file")
                await answerer.process(rec, _caller(r))
                r.references[k] = rec.candidates[0].answer if rec.candidates else ""
        return r.references[k]

    async def one(k: str, text: str) -> float | None:
        if not text:
            return 0.0  # an empty sample loses to any answer
        ref = await reference(k)
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        # Its own id per sample: the principle is drawn per comparison, and the calls are cached per text.
        rec = Record.new(r.records[k].prompt, "file").model_copy(update={"id": f"{k}-{digest}"})
        rec.candidates = [Candidate(index=0, answer=text, finish_reason="stop"),
                          Candidate(index=1, answer=ref, finish_reason="stop")]
        await stage.process(rec, _caller(r))
        j = rec.judgement
        if j is None or len(j.options) < 2:
            return 0.5  # the same text as the reference: a tie
        ps = [c.p_i if c.i == 0 else 1 - c.p_i for c in j.comparisons if c.p_i is not None]
        return sum(ps) / len(ps) if ps else None  # None: no readable verdict, left out of the reward

    async def reward(prompts, completions, key, **_kw) -> list[float | None]:
        return await settled(one(k, text_of(c)) for k, c in zip(key, completions, strict=True))

    return reward


def _idk(term: IdkTerm, r: Rewards, _: str):
    cfg = r.pipe.cfg
    icfg = cfg.stages.idk or IdkConfig(answers_field=term.answers_field)
    pdir = cfg.path(cfg.prompts_dir)
    declines = r.pipe.declines or idk.load_declines(pdir, icfg.declines)
    judge_template = idk.load_judge(pdir, icfg)
    spec = _model(r, cfg.model_for(icfg)) if judge_template is not None else cfg.model
    stage = IdkStage(icfg, declines, judge_template, spec, cfg.seed)

    async def one(k: str, i: int, text: str) -> float:
        rec = r.records[k]
        refs = rec.metadata[term.answers_field]
        refs = [refs] if isinstance(refs, str) else refs
        if match_reference(text, refs) is None and is_decline(text, declines):
            return term.decline
        sample = await stage._judge(rec, _caller(r), Candidate(index=i, answer=text, finish_reason="stop"), refs)
        return term.correct if sample.correct else term.wrong

    async def reward(prompts, completions, key, **_kw) -> list[float]:
        return await settled(one(k, i, text_of(c)) for i, (k, c) in enumerate(zip(key, completions, strict=True)))

    return reward


def _facts(term: FactsTerm, r: Rewards, _: str):
    from factory.search import load_search

    cfg = r.pipe.cfg
    fcfg = cfg.stages.factcheck or FactCheckConfig()
    templates = factcheck.load_templates(cfg.path(cfg.prompts_dir), fcfg)
    s = fcfg.search
    search = load_search(s.backend, cache_dir=cfg.path(s.index_dir) if s.index_dir else None,
                         collection=cfg.path(s.collection) if s.collection else None)
    r.pipe.search = search  # closed with the pipeline
    stage = FactCheckStage(fcfg, templates, _model(r, cfg.model_for(fcfg)), cfg.seed, search)

    async def one(k: str, i: int, text: str) -> float:
        if not text:
            return term.no_claims
        check = await stage.check(r.records[k].model_copy(deep=True), _caller(r), i, "initial", text)
        if check.supported + check.not_supported == 0:
            return term.no_claims
        return metric_of(check, term.metric)

    async def reward(prompts, completions, key, **_kw) -> list[float]:
        return await settled(one(k, i, text_of(c)) for i, (k, c) in enumerate(zip(key, completions, strict=True)))

    return reward
