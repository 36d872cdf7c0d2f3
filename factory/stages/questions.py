"""`questions`: the source of records. Seed prompts, prompts generated from seeds by the model
(few-shot), or a prompts file. Exact duplicates are removed, and counted."""

from __future__ import annotations

import asyncio
import math
import re

from factory.caller import Caller, derive_seed, rng
from factory.config import QuestionsConfig
from factory.errors import ModelCallError
from factory.prompts import Template
from factory.records import Record
from factory.stages import params
from factory.stats import StageStats

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


class QuestionsStage:
    """Not a per-record stage: it produces the records the other stages consume."""

    name = NAME

    def __init__(self, cfg: QuestionsConfig, template: Template, model: str, seed: int,
                 seeds: list[Record], from_file: list[Record] | None = None, limit: int | None = None):
        self.cfg, self.template, self.model, self.seed = cfg, template, model, seed
        self.seeds, self.from_file, self.limit = seeds, from_file, limit

    async def produce(self, caller: Caller) -> list[Record]:
        """Every input prompt is accounted for: `in` minus the counted drops, plus generated, is `out`."""
        st = caller.stats[self.name]
        st.touch()
        if self.from_file is not None:
            st.records_in = len(self.from_file)
            records = dedup(self.from_file, st)
        else:
            st.records_in = len(self.seeds)
            records = []
            if not self.cfg.include_seeds:
                st.drop("seed_used_as_example_only", len(self.seeds))
            else:
                records = dedup(self.seeds, st)
                if self.cfg.max_seeds is not None and len(records) > self.cfg.max_seeds:
                    st.drop("seed_not_sampled", len(records) - self.cfg.max_seeds)
                    keep = set(map(id, rng(self.seed, "seed-sample").sample(records, self.cfg.max_seeds)))
                    records = [r for r in records if id(r) in keep]
            room = self.cfg.generate if self.limit is None else max(0, min(self.cfg.generate, self.limit - len(records)))
            records += await self._generate(caller, st, room, {r.id for r in self.seeds})
        if self.limit is not None and len(records) > self.limit:
            st.drop("over_limit", len(records) - self.limit)
            records = records[: self.limit]
        st.records_out = len(records)
        st.touch()
        return records

    async def _generate(self, caller: Caller, st: StageStats, want: int, taken: set[str]) -> list[Record]:
        if want <= 0 or not self.seeds:
            return []
        per_call = self.cfg.questions_per_call
        max_calls = self.cfg.max_calls or 3 * math.ceil(want / per_call)
        new: list[Record] = []
        calls = 0
        while len(new) < want and calls < max_calls:
            wave = min(max_calls - calls, math.ceil((want - len(new)) / per_call))
            results = await asyncio.gather(*(self._call(caller, calls + i) for i in range(wave)),
                                           return_exceptions=True)
            calls += wave
            for res in results:  # in call order, so the result does not depend on timing
                if isinstance(res, ModelCallError):
                    st.counters["failed_generation_call"] += 1
                    continue
                if isinstance(res, BaseException):
                    raise res
                for rec in res:
                    if rec.id in taken:
                        st.drop("duplicate_generated")
                    elif len(new) >= want:
                        st.drop("surplus_generated")
                    else:
                        taken.add(rec.id)
                        new.append(rec)
        st.counters["generated"] += len(new)
        if len(new) < want:
            st.counters["generation_short"] += want - len(new)
        return new

    async def _call(self, caller: Caller, i: int) -> list[Record]:
        examples = rng(self.seed, "questions", i).sample(self.seeds, min(self.cfg.examples_per_call, len(self.seeds)))
        variables = {"examples": [r.prompt for r in examples], "n": self.cfg.questions_per_call}
        p = params(self.cfg, derive_seed(self.seed, "questions", i))
        out, ref = await caller.chat(self.name, f"generate[{i}]", self.template, variables, self.model, p)
        prompts, rejected = parse_questions(out.text)
        if rejected:
            caller.stats[self.name].drop("unparseable_line", rejected)
        records = []
        for q in prompts:
            rec = Record.new(q, "generated", generated_from=[r.id for r in examples], kind="generated")
            rec.calls.append(ref)
            records.append(rec)
        return records
