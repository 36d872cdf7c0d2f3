"""`judge`: rank each prompt's answers and choose preference pairs, as RLAIF does.

Options are the candidates' first answers, their revisions, or both. Every pair of options is
compared under principles drawn per comparison from the constitution's `judge` texts, in both
orders, as a multiple-choice question; the soft label comes from the log-probabilities of "A" and
"B", or from parsed (and optionally sampled) verdicts where the backend gives none. A teacher
(classifier) replaces the judge for pairs it applies to; with several, the first whose rule matches a
prompt decides (say, one for a topic and another for every other prompt). The pairwise results rank
the options (Bradley-Terry or win counts) and give the pairs. Everything lands in `record.judgement`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from pathlib import Path

from factory.config import JudgeConfig, TeacherConfig
from factory.constitution import Constitution, Principle
from factory.engine.caller import Caller, derive_seed, rng
from factory.errors import FactoryError
from factory.hygiene.filters import QualityConfig, check
from factory.judging import (
    AppliesWhen,
    Scorer,
    choice_probability,
    clamp_cot,
    combine_orders,
    expected_score,
    load_scorer,
    parse_choice,
    parse_score,
    score_where,
    select_pairs,
    sigmoid,
    vote_probability,
)
from factory.judging.ranking import scores as ranking_scores
from factory.models import GenParams
from factory.prompts import Template, load_template
from factory.records import Comparison, Judgement, Option, Pair, Record, Verdict, dialogue_variables, normalise
from factory.stages import Loaded, Stage, StageEntry
from factory.stages.answer import AnswerStage

CHOICE_VARIABLES = {"prompt", "principle", "a", "b", "history", "system"}
SCORE_VARIABLES = {"prompt", "principle", "response", "history", "system"}
SCALE = tuple(str(i) for i in range(1, 11))


class JudgeStage(Stage):
    name = "judge"

    def __init__(self, cfg: JudgeConfig, constitution: Constitution, template: Template, model: str, seed: int,
                 teachers: Sequence[Scorer] = (), anchors: Sequence[AnswerStage | None] = (),
                 quality: QualityConfig | None = None):
        """`teachers`: the scorers of `cfg.all_teachers`, in order; `anchors`: for each, the answer stage
        that samples its anchor model's answers (None: not anchored); `quality`: the filters whose failures
        are demoted (None: none are)."""
        self.cfg, self.template, self.model, self.seed, self.quality = cfg, template, model, seed, quality
        self.teachers = list(zip(cfg.all_teachers, teachers, strict=True))
        self.anchors = list(anchors) or [None] * len(self.teachers)
        self.rules = [AppliesWhen(mentions=t.mentions, regex=t.regex) for t in cfg.all_teachers]
        self.principles = [p for p in constitution.principles if p.judge]
        if not self.principles:
            raise FactoryError(f"constitution {constitution.label} has no principle with a `judge:` instruction; "
                               "add one, or remove stages.judge from the pipeline config")

    def options(self, record: Record) -> list[Option]:
        """The texts to rank: per candidate its first answer and/or its final revision, each text once."""
        kinds = ("initial", "final") if self.cfg.compare == "both" else (self.cfg.compare,)
        out, seen = [], set()
        for cand in record.candidates:
            for kind in kinds:
                text = cand.answer if kind == "initial" else cand.final
                if normalise(text) not in seen:
                    seen.add(normalise(text))
                    out.append(Option(candidate=cand.index, kind=kind, text=text))
        return out

    def _teach(self, record: Record, texts: list[str]) -> tuple[int, list[float | None]] | None:
        """The first teacher that applies and its scores: with `where: prompt`, one whose rule matches the
        prompt scores every answer; with `where: answer`, one scores the answers its rule matches."""
        for k, ((t, scorer), when) in enumerate(zip(self.teachers, self.rules, strict=True)):
            if t.where == "prompt" and when.applies(record.prompt):
                return k, score_where(scorer, texts)
            if t.where == "answer":
                found = score_where(scorer, texts, when)
                if any(s is not None for s in found):
                    return k, found
        return None

    def draw(self, record: Record, *parts: object) -> list[Principle]:
        k = min(self.cfg.principles, len(self.principles))
        return rng(self.seed, record.id, "judge", *parts).sample(self.principles, k)

    async def process(self, record: Record, caller: Caller) -> None:
        st = caller.stats[self.name]
        opts = self.options(record)
        j = Judgement(judge_model=self.model, method=self.cfg.method, options=opts)
        record.judgement = j
        if len(opts) < 2:
            st.counters["single_option"] += 1
            return
        if self.quality is not None:
            j.failing = {i: reason for i, o in enumerate(opts) if (reason := check(o.text, self.quality))}
            for reason in j.failing.values():
                st.counters[f"demoted:{reason}"] += 1
        teacher = None
        if self.teachers and (taught := await asyncio.to_thread(self._teach, record, [o.text for o in opts])):
            k, got = taught
            if self.anchors[k] is not None:
                got = await self._anchored(record, caller, k, got)
            teacher = self.teachers[k] if any(s is not None for s in got) else None
            j.teacher = teacher_name(*teacher) if teacher else None
            j.teacher_scores = {i: s for i, s in enumerate(got) if s is not None}
        pairs = list(itertools.combinations(range(len(opts)), 2))
        if self.cfg.method == "score" and any(not self._taught(j, a, b) for a, b in pairs):
            principles, scored = self.draw(record, "score"), [i for i in range(len(opts)) if i not in j.failing]
            per = await asyncio.gather(*(self._score(record, caller, i, p) for i in scored for p in principles))
            for n, i in enumerate(scored):
                got = [s for s in per[n * len(principles):(n + 1) * len(principles)] if s is not None]
                if got:
                    j.direct_scores[i] = sum(got) / len(got)
        found = await asyncio.gather(*(self._pair(record, caller, a, b, teacher) for a, b in pairs))
        j.comparisons = [c for cs in found for c in cs]
        results = [(c.i, c.j, c.p_i) for c in j.comparisons if c.p_i is not None]
        if not results:
            st.counters["unjudged"] += 1
            return
        j.scores = [round(s, 6) for s in ranking_scores(len(opts), results, self.cfg.ranking)]
        limit = teacher[0].max_pairs if teacher and teacher[0].max_pairs else self.cfg.max_pairs
        for chosen, rejected, p in select_pairs(len(opts), results, self.cfg.pairs, self.cfg.ranking, limit):
            used = [c for c in j.comparisons if {c.i, c.j} == {chosen, rejected} and c.p_i is not None]
            flags = [c.consistent for c in used if c.consistent is not None]
            by = {c.by for c in used}
            j.pairs.append(Pair(judge_model=j.teacher if by == {"teacher"} and j.teacher else
                                "quality" if by == {"quality"} else self.model,
                                chosen=chosen, rejected=rejected, p_chosen=round(p, 6),
                                score_chosen=j.scores[chosen], score_rejected=j.scores[rejected],
                                consistent=all(flags) if flags else None,
                                principle_ids=sorted({c.principle_id for c in used})))

    async def _anchored(self, record: Record, caller: Caller, k: int, got: list[float | None]) -> list[float | None]:
        """Minus each score's distance from the level of teacher K's anchor: the mean score of its model's
        answers to this prompt (sampled as the answer stage samples, seeded apart from the candidates)."""
        (t, scorer), anchor = self.teachers[k], self.anchors[k]
        assert t.anchor is not None and anchor is not None and record.judgement is not None
        refs = [c.answer for c in await anchor.sample(record, caller, t.anchor.samples, tag="anchor", stage=self.name)
                if c.answer]
        if not refs:
            caller.stats[self.name].counters["anchor_empty"] += 1  # the judge model ranks this prompt
            return [None] * len(got)
        level = sum(await asyncio.to_thread(scorer.score, refs)) / len(refs)
        record.judgement.anchor_level = round(level, 6)
        return [None if s is None else t.anchor.held(s, level) for s in got]

    def _taught(self, j: Judgement, a: int, b: int) -> bool:
        return a in j.teacher_scores and b in j.teacher_scores

    async def _pair(self, record: Record, caller: Caller, a: int, b: int,
                    teacher: tuple[TeacherConfig, Scorer] | None) -> list[Comparison]:
        j = record.judgement
        assert j is not None
        if a in j.failing or b in j.failing:  # the one that passes wins; two that fail give no result
            p = None if a in j.failing and b in j.failing else float(b in j.failing)
            return [Comparison(i=a, j=b, principle_id="quality", p_i=p, consistent=None, by="quality")]
        if teacher is not None and self._taught(j, a, b):
            p = sigmoid(teacher[0].scale * (j.teacher_scores[a] - j.teacher_scores[b]))
            return [Comparison(i=a, j=b, principle_id=f"teacher:{teacher_name(*teacher)}", p_i=round(p, 6),
                               consistent=None, by="teacher")]
        if self.cfg.method == "score":
            if a not in j.direct_scores or b not in j.direct_scores:
                return [Comparison(i=a, j=b, principle_id="score", p_i=None, consistent=None, by="score")]
            p = sigmoid(j.direct_scores[a] - j.direct_scores[b])
            return [Comparison(i=a, j=b, principle_id="score", p_i=round(p, 6), consistent=None, by="score")]
        return list(await asyncio.gather(*(self._compare(record, caller, a, b, p) for p in self.draw(record, a, b))))

    async def _compare(self, record: Record, caller: Caller, a: int, b: int, principle: Principle) -> Comparison:
        """Options a and b under one principle, in both orders."""
        first, swapped = await asyncio.gather(self._verdict(record, caller, a, b, principle),
                                              self._verdict(record, caller, b, a, principle))
        if first.p_a is not None and swapped.p_a is not None:
            p, consistent = combine_orders(first.p_a, swapped.p_a)
        elif first.p_a is not None or swapped.p_a is not None:  # one order could not be read
            p, consistent = first.p_a if first.p_a is not None else 1 - swapped.p_a, False
        else:
            p, consistent = None, None
        if consistent is False:
            caller.stats[self.name].counters["position_inconsistent"] += 1
        return Comparison(i=a, j=b, principle_id=principle.id, p_i=None if p is None else round(p, 6),
                          consistent=consistent, by="judge", verdicts=[first, swapped])

    async def _verdict(self, record: Record, caller: Caller, a: int, b: int, principle: Principle) -> Verdict:
        """One order: (A) = option a, (B) = option b. Log-probs if the backend gives them, else parsed
        verdicts (`samples` of them); an unreadable one is sampled afresh up to `parse_attempts` times."""
        st = caller.stats[self.name]
        opts = record.judgement.options  # type: ignore[union-attr]
        texts = [opts[a].text, opts[b].text]
        cot = self.cfg.method == "cot"
        variables = {"prompt": record.prompt, "principle": principle, "a": texts[0], "b": texts[1],
                     **dialogue_variables(record)}
        params = GenParams(temperature=self.cfg.temperature, top_p=self.cfg.top_p, max_tokens=self.cfg.max_tokens,
                           seed=derive_seed(self.seed, record.id, "judge", a, b, principle.id),
                           logprob_tokens=() if cot else ("A", "B"))
        verdicts: list[str] = []
        sample, unreadable, reply = 0, 0, ""
        while len(verdicts) < self.cfg.samples and unreadable < caller.parse_attempts:
            out, ref = await caller.chat(self.name, f"judge[{a},{b}]", self.template, variables, self.model, params,
                                         context={"principle": principle.digest()}, sample=sample)
            record.calls.append(ref)
            sample, reply = sample + 1, out.text.strip()[:500]
            if not cot and not verdicts and (p := choice_probability(out.logprobs)) is not None:
                st.counters["verdict:logprobs"] += 1
                return Verdict(a=a, b=b, p_a=round(p, 6), source="logprobs", reply=reply)
            verdict = parse_choice(out.text, texts)
            if verdict is None:
                unreadable += 1
                st.counters["verdict_retry"] += 1
            else:
                verdicts.append(verdict)
        p = vote_probability(verdicts)
        if p is None:
            st.counters["unparseable_verdict"] += 1
            return Verdict(a=a, b=b, p_a=None, source="unparseable", reply=reply)
        source = "cot" if cot else "votes" if self.cfg.samples > 1 else "parsed"
        st.counters[f"verdict:{source}"] += 1
        return Verdict(a=a, b=b, p_a=round(clamp_cot(p) if cot else p, 6), source=source, reply=reply)

    async def _score(self, record: Record, caller: Caller, i: int, principle: Principle) -> float | None:
        """A 1-10 score for one option: the expected score from log-probs, else a parsed one."""
        st = caller.stats[self.name]
        text = record.judgement.options[i].text  # type: ignore[union-attr]
        variables = {"prompt": record.prompt, "principle": principle, "response": text, **dialogue_variables(record)}
        params = GenParams(temperature=self.cfg.temperature, top_p=self.cfg.top_p, max_tokens=self.cfg.max_tokens,
                           seed=derive_seed(self.seed, record.id, "score", i, principle.id), logprob_tokens=SCALE)
        for sample in range(caller.parse_attempts):
            out, ref = await caller.chat(self.name, f"score[{i}]", self.template, variables, self.model, params,
                                         context={"principle": principle.digest()}, sample=sample)
            record.calls.append(ref)
            value = expected_score(out.logprobs)
            if value is None and (parsed := parse_score(out.text, candidates=[text])) is not None:
                value = float(parsed)
            if value is not None:
                st.counters["score:logprobs" if out.logprobs else "score:parsed"] += 1
                return value
            st.counters["verdict_retry"] += 1
        st.counters["unparseable_score"] += 1
        return None


def teacher_name(t: TeacherConfig, scorer: Scorer) -> str:
    """The scorer's name; an anchored one's with its anchor model (`vader:positive@local:smollm2`)."""
    return f"{scorer.name}@{t.anchor.model}" if t.anchor else scorer.name


def template_for(prompts_dir: Path, cfg: JudgeConfig) -> Template:
    """The template of the judging method: `choice`, `cot` or `score`."""
    name, variables = {"choice": (cfg.template, CHOICE_VARIABLES), "cot": (cfg.cot_template, CHOICE_VARIABLES),
                       "score": (cfg.score_template, SCORE_VARIABLES)}[cfg.method]
    return load_template(prompts_dir, name, variables)


def _load(prompts_dir: Path, cfg: JudgeConfig) -> Loaded:
    return Loaded({"judge": template_for(prompts_dir, cfg)},
                  extra=[load_scorer(t.scorer) for t in cfg.all_teachers])


STAGE = StageEntry(
    "judge", load=_load,
    build=lambda pipe, cfg: JudgeStage(cfg, pipe.constitution, pipe.templates["judge"], pipe.specs["judge"],
                                       pipe.cfg.seed, pipe.teachers, [
                                           AnswerStage(pipe.cfg.stages.answer, pipe.templates["answer"],
                                                       t.anchor.model, pipe.cfg.seed) if t.anchor else None
                                           for t in cfg.all_teachers],
                                       pipe.cfg.stages.export.clean.quality if cfg.demote_failing else None),
    rows=lambda cfg: "rank",
    feeds=frozenset({"critique_revise"}),  # it ranks first answers against revisions
)
