"""`questions`: the source of records. Seed prompts, prompts generated from seeds by the model
(few-shot), or a prompts file. Exact duplicates are removed, and counted."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator

from factory.config import QuestionsConfig
from factory.engine.caller import Caller, derive_seed, rng
from factory.engine.stats import StageStats
from factory.errors import ModelCallError, ParseError
from factory.hygiene.gates import incoherent_request
from factory.inputs import Prompts
from factory.prompts import Template
from factory.records import Record
from factory.stages import params

VARIABLES = {"examples", "n"}
NAME = "questions"

_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)]|q\d*[:.]|question\s*\d*[:.]|message\s*\d*[:.])\s*", re.IGNORECASE)


def parse_questions(text: str) -> tuple[list[str], int]:
    """One prompt per line; numbering and quotes removed. Returns (prompts, lines rejected)."""
    out, rejected = [], 0
    for line in text.splitlines():
        q = _BULLET.sub("", line).strip().strip('"').strip()
        if not q:
            continue
        if len(q) < 12 or len(q.split()) < 3 or len(q) > 500 or q.endswith(":"):
            rejected += 1
            continue
        out.append(q)
    return out, rejected


def dedup(records: list[Record], st: StageStats) -> list[Record]:
    seen: set[str] = set()
    kept = []
    for r in records:
        if r.id in seen:
            st.drop("duplicate_prompt")
            continue
        seen.add(r.id)
        kept.append(r)
    return kept


def count_kind(st: StageStats, rec: Record) -> None:
    """Prompts per kind (the mode that generated them, or the input's `kind`), for the report."""
    st.counters[f"kind:{rec.metadata.get('kind') or rec.source}"] += 1


def questions_or_retry(text: str) -> tuple[list[str], int]:
    """The parser for generation calls: an output with no usable line is sampled again."""
    prompts, rejected = parse_questions(text)
    if not prompts:
        raise ParseError(f"no usable question in {len(text.splitlines())} line(s)")
    return prompts, rejected


class QuestionsStage:
    """Not a per-record stage: the source of the records the other stages consume. It streams:
    seed or file prompts flow on while new ones are still being generated."""

    name = NAME

    def __init__(self, cfg: QuestionsConfig, template: Template, model: str, seed: int,
                 seeds: list[Record], from_file: Prompts | None = None, limit: int | None = None):
        self.cfg, self.template, self.model, self.seed = cfg, template, model, seed
        self.seeds, self.from_file, self.limit = seeds, from_file, limit
        self.failures: list[tuple[str, str]] = []  # (generation call, reason): failed calls with no record

    async def produce(self, caller: Caller) -> AsyncIterator[Record]:
        """Every input prompt is accounted for: `in` minus the counted drops, plus generated, is `out`."""
        st = caller.stats[self.name]
        st.touch()
        if self.from_file is not None:
            st.records_in = self.from_file.count
            for rec, dropped in self.from_file:
                if dropped:
                    st.drop(dropped)
                    continue
                count_kind(st, rec)
                st.records_out += 1
                yield rec
            return
        st.records_in = len(self.seeds)
        records = self.seed_records(st)
        for rec in records:
            st.records_out += 1
            yield rec
        async for rec in self._generate(caller, st, self.room(len(records)), {r.id for r in self.seeds}):
            st.records_out += 1
            yield rec
        st.touch()

    def seed_records(self, st: StageStats) -> list[Record]:
        """The seed prompts that are records: deduplicated, sampled to max_seeds, cut at --limit."""
        if not self.cfg.include_seeds:
            st.drop("seed_used_as_example_only", len(self.seeds))
            return []
        records = dedup(self.seeds, st)
        if self.cfg.max_seeds is not None and len(records) > self.cfg.max_seeds:
            st.drop("seed_not_sampled", len(records) - self.cfg.max_seeds)
            keep = set(map(id, rng(self.seed, "seed-sample").sample(records, self.cfg.max_seeds)))
            records = [r for r in records if id(r) in keep]
        if self.limit is not None and len(records) > self.limit:
            st.drop("over_limit", len(records) - self.limit)
            records = records[: self.limit]
        return records

    def room(self, seeds: int) -> int:
        """How many prompts to generate after `seeds` seed records (none past --limit)."""
        return self.cfg.generate if self.limit is None else max(0, min(self.cfg.generate, self.limit - seeds))

    def max_calls(self, want: int) -> int:
        """At most this many generation calls for `want` prompts (max_calls, default 3x the needed)."""
        return 0 if want <= 0 or not self.seeds else self.cfg.max_calls or 3 * math.ceil(want / self.cfg.questions_per_call)

    async def _generate(self, caller: Caller, st: StageStats, want: int, taken: set[str]) -> AsyncIterator[Record]:
        if want <= 0 or not self.seeds:
            return
        per_call, max_calls = self.cfg.questions_per_call, self.max_calls(want)
        made = calls = 0
        while made < want and calls < max_calls:
            wave = min(max_calls - calls, math.ceil((want - made) / per_call))
            results = await asyncio.gather(*(self._call(caller, calls + i) for i in range(wave)),
                                           return_exceptions=True)
            for i, res in enumerate(results):  # in call order, so the result does not depend on timing
                if isinstance(res, ModelCallError) and not res.fatal:
                    st.counters["failed_generation_call"] += 1
                    self.failures.append((f"generate[{calls + i}]", str(res)))
                    continue
                if isinstance(res, BaseException):
                    raise res
                for rec in res:
                    if rec.id in taken:
                        st.drop("duplicate_generated")
                    elif self.cfg.gate_incoherent and incoherent_request(rec.prompt):
                        st.drop("gate_incoherent_request")
                    elif made >= want:
                        st.drop("surplus_generated")
                    else:
                        taken.add(rec.id)
                        made += 1
                        yield rec
            calls += wave
        st.counters["generated"] += made
        if made < want:
            st.counters["generation_short"] += want - made

    async def _call(self, caller: Caller, i: int) -> list[Record]:
        examples = rng(self.seed, "questions", i).sample(self.seeds, min(self.cfg.examples_per_call, len(self.seeds)))
        variables = {"examples": [r.prompt for r in examples], "n": self.cfg.questions_per_call}
        p = params(self.cfg, derive_seed(self.seed, "questions", i))
        (prompts, rejected), _, ref = await caller.chat_parsed(self.name, f"generate[{i}]", self.template, variables,
                                                              self.model, p, questions_or_retry)
        if rejected:
            caller.stats[self.name].drop("unparseable_line", rejected)
        records = []
        for q in prompts:
            rec = Record.new(q, "generated", generated_from=[r.id for r in examples], kind="generated")
            rec.calls.append(ref)
            records.append(rec)
        return records
