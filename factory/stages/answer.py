"""`answer`: one or more candidate answers per prompt. A conversation's system prompt and earlier turns
go to the model as chat turns before the user's last turn, so the answer is the assistant's next turn."""

from __future__ import annotations

import asyncio

from factory.config import AnswerConfig
from factory.engine.caller import Caller, derive_seed
from factory.prompts import Template, load_template
from factory.records import Candidate, Record
from factory.stages import Loaded, Stage, StageEntry, params

VARIABLES = {"prompt"}


class AnswerStage(Stage):
    name = "answer"

    def __init__(self, cfg: AnswerConfig, template: Template, model: str, seed: int):
        self.cfg, self.template, self.model, self.seed = cfg, template, model, seed

    async def process(self, record: Record, caller: Caller) -> None:
        candidates = await self.sample(record, caller, self.cfg.candidates)
        empty = [c for c in candidates if not c.answer]
        if empty:
            caller.stats[self.name].counters["empty_candidate"] += len(empty)
        record.candidates = [c for c in candidates if c.answer]
        if not record.candidates:
            self.drop(record, "empty_answer", f"all {len(candidates)} candidate(s) came back empty")

    async def sample(self, record: Record, caller: Caller, n: int, *, tag: str = "answer",
                     stage: str | None = None) -> list[Candidate]:
        """N answers to the record's prompt, each seeded by TAG and its index; `stage` names whose calls
        they are (the judge's anchor answers are the judge's)."""
        async def one(i: int) -> Candidate:
            p = params(self.cfg, derive_seed(self.seed, record.id, tag, i))
            out, ref = await caller.chat(stage or self.name, f"{tag}[{i}]", self.template, {"prompt": record.prompt},
                                         self.model, p, dialogue=record.context)
            record.calls.append(ref)
            return Candidate(index=i, answer=out.text.strip(), finish_reason=out.finish_reason)

        return list(await asyncio.gather(*(one(i) for i in range(n))))


STAGE = StageEntry(
    "answer",
    load=lambda prompts_dir, cfg: Loaded({"answer": load_template(prompts_dir, cfg.template, VARIABLES)}),
    build=lambda pipe, cfg: AnswerStage(cfg, pipe.templates["answer"], pipe.specs["answer"], pipe.cfg.seed),
    rows=lambda cfg: "base",
)
