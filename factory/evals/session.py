"""One output folder, one Caller over every model a command names, and the two-order A/B question
that generation filters, behaviour evals, P(IK) and P(True) all ask."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from factory.config import load_config
from factory.engine.caller import Caller, derive_seed
from factory.engine.calllog import CallLog
from factory.engine.pipeline import Overrides, Pipeline
from factory.engine.prices import Budget
from factory.engine.rundir import create_run_dir
from factory.engine.stats import Stats
from factory.judging import choice_probability, parse_choice
from factory.models import GenParams, load_model
from factory.prompts import Template, load_template

T = TypeVar("T")


class Session:
    """The pipeline config's constitution, prompts, limits and seed, with `specs` loaded."""

    def __init__(self, config: Path | None, specs: list[str], stages: list[str]):
        self.cfg = load_config(config)
        self.pipe = Pipeline.prepare(self.cfg, Overrides(model=specs[0] if specs else None), needs_seeds=False)
        self.seed, self.stages = self.pipe.cfg.seed, stages
        self.prompts_dir = self.pipe.cfg.path(self.pipe.cfg.prompts_dir)
        self.specs = list(dict.fromkeys(specs))

    def template(self, name: str, variables: set[str]) -> Template:
        return load_template(self.prompts_dir, name, variables)

    def run(self, out: Path | None, main: Callable[[Caller], Awaitable[T]]) -> tuple[T, Path, Stats]:
        """Load the models, create the folder (only now: bad input leaves nothing behind), run `main`."""
        for spec in self.specs:
            if spec not in self.pipe.models:
                self.pipe.models[spec] = load_model(spec)
        folder = create_run_dir(out)
        log, stats = CallLog(folder / "calls.sqlite"), Stats(self.stages)

        async def go() -> T:
            caller = self.pipe.caller(log, stats, Budget(self.cfg.max_cost))
            try:
                return await main(caller)
            finally:
                await self.pipe.aclose()
                log.close()

        return asyncio.run(go()), folder, stats


async def choose(caller: Caller, stage: str, template: Template, variables: dict, options: list[str], model: str,
                 seed: int, *parts: object) -> list[float | None]:
    """P(options[0]) from each of the two orders ((A) first option, then (A) second): first-token
    log-probs of A and B where the backend gives them, else the parsed letter (1 or 0); None when
    unreadable. Asking both orders cancels the position bias small judges have."""

    async def order(a: str, b: str, k: int) -> float | None:
        params = GenParams(temperature=0.0, max_tokens=8, logprob_tokens=("A", "B"),
                           seed=derive_seed(seed, stage, *parts, k))
        out, _ = await caller.chat(stage, f"{stage}[{k}]", template, variables | {"a": a, "b": b}, model, params)
        p = choice_probability(out.logprobs)
        if p is None:
            letter = parse_choice(out.text, [a, b])
            p = None if letter is None else float(letter == "A")
        if p is None:
            caller.stats[stage].counters["unreadable_choice"] += 1
        return p

    first, swapped = await asyncio.gather(order(options[0], options[1], 0), order(options[1], options[0], 1))
    return [first, None if swapped is None else 1.0 - swapped]


def mean(ps: list[float | None]) -> float | None:
    got = [p for p in ps if p is not None]
    return sum(got) / len(got) if got else None
