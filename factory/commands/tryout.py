"""`factory try`: the researcher loop. One prompt, every step printed, a word diff at the end."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from factory.config import cache_root, load_config
from factory.diff import word_diff
from factory.engine.calllog import CallLog
from factory.engine.pipeline import Overrides, Pipeline
from factory.engine.prices import Budget
from factory.engine.stats import Stats
from factory.errors import FactoryError
from factory.inputs.turns import RowError, from_messages
from factory.records import Record
from factory.stages.factcheck import PRINCIPLE_ID


def dialogue_record(prompt: str, system: str | None, turns: tuple[str, ...]) -> Record:
    """The record `try` runs: PROMPT, after the earlier turns (ROLE:TEXT) and the system prompt, checked as
    a prompts file's `messages` would be."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    for t in turns:
        role, sep, text = t.partition(":")
        if not sep:
            raise FactoryError(f"--turn {t!r}: write ROLE:TEXT, e.g. user:Hello or assistant:Hi there")
        messages.append({"role": role.strip(), "content": text.strip()})
    messages.append({"role": "user", "content": prompt})
    try:
        return from_messages(messages, "--turn").record("file")
    except RowError as e:
        raise FactoryError(f"{e.field}: {e.message}") from None


def try_prompt(prompt: str, config: Path | None, constitution: Path | None, model: str | None,
               rounds: int | None, seed: int, console: Console, *, system: str | None = None,
               turns: tuple[str, ...] = ()) -> Record:
    cfg = load_config(config)
    if constitution is not None:
        cfg.constitution = str(constitution.resolve())
    pipe = Pipeline.prepare(cfg, Overrides(model=model, rounds=rounds, seed=seed), needs_seeds=False)
    pipe.load_models()
    record = dialogue_record(prompt, system, turns)
    stats = Stats(["answer", "critique_revise"])
    cache_root().mkdir(parents=True, exist_ok=True)
    log = CallLog(cache_root() / "try-calls.sqlite")

    async def main() -> None:
        caller = pipe.caller(log, stats, Budget(None))
        try:
            for stage in pipe.stages():
                await stage.process(record, caller)
                if record.dropped:
                    break
        finally:
            await pipe.aclose()
            log.close()

    asyncio.run(main())
    c = pipe.constitution
    for m in record.context:
        console.print(Panel(m["content"], title=m["role"], title_align="left", style="dim"))
    console.print(Panel(record.prompt, title="prompt" if not record.context else "user (last turn)", title_align="left"))
    if record.dropped:
        console.print(f"[red]dropped at {record.dropped.stage}: {record.dropped.reason}[/red] {record.dropped.detail}")
        return record
    for cand in record.candidates:
        console.print(Panel(cand.answer, title=f"answer [{cand.index}]", title_align="left"))
        for i, rnd in enumerate(cand.rounds, 1):
            asked = c.principle(rnd.principle_id).critique if rnd.principle_id != PRINCIPLE_ID \
                else "claims the search did not support"
            console.print(Panel(f"[bold]{asked}[/bold]\n\n{rnd.critique}",
                                title=f"round {i}: critique ({rnd.principle_id})", title_align="left"))
            console.print(Panel(rnd.revision, title=f"round {i}: revision" + (" (no change)" if rnd.noop else ""),
                                title_align="left"))
        console.print(Panel(word_diff(cand.answer, cand.final), title="diff: first answer -> final revision",
                            title_align="left"))
    cached = sum(s.cached_calls for s in stats.stages.values())
    calls = sum(s.calls for s in stats.stages.values())
    console.print(f"{calls} calls ({cached} from cache), constitution {c.label} sha256 {c.digest[:12]}")
    return record
