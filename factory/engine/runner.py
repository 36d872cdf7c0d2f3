"""The runner: owns the run directory, the models, concurrency, the call log and cache, the state
that makes a run resumable, lineage, failures and stats. Stages never touch any of these. How a run
is finished (export, report) and which executor drives it live in factory/executors/.

Records flow without barriers: each moves to its next stage as soon as its own calls finish, and
the input is streamed through a bounded window of records in flight."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rich.console import Console

from factory.engine.caller import Caller
from factory.engine.calllog import CallLog
from factory.engine.limits import Lease
from factory.engine.pipeline import Pipeline
from factory.engine.prices import Budget
from factory.engine.progress import Display
from factory.engine.state import RunState, lock_run_dir
from factory.engine.stats import Stats
from factory.errors import BudgetExceeded, FactoryError, ModelCallError
from factory.models import Completion, GenParams, Message
from factory.records import Record
from factory.stages import Stage

EXIT_FAILURES, EXIT_STOPPED = 1, 3
OUTAGE_NOTE_S = 30.0  # how often the watchdog repeats that an endpoint is down
BATCH_WINDOW = 50_000  # records in flight with --batch: a batch is only as large as what is waiting


class Source(Protocol):
    """Where records come from: the questions stage, or a Ray shard's input file."""

    name: str
    failures: list[tuple[str, str]]  # (generation call, reason): failed calls that belong to no record

    def produce(self, caller: Caller) -> AsyncIterator[Record]: ...


@dataclass
class Outcome:
    run_dir: Path
    status: str  # complete | complete_with_failures | stopped_at_budget
    failed: int
    counts: dict

    @property
    def exit_code(self) -> int:
        return {"complete": 0, "complete_with_failures": EXIT_FAILURES}.get(self.status, EXIT_STOPPED)


class Run:
    """One invocation on a run directory (new or resumed), holding its lock throughout."""

    def __init__(self, pipe: Pipeline, run_dir: Path, console: Console, *, batch: bool = False, debug: bool = False,
                 lease: Lease | None = None):
        self.pipe, self.dir, self.console, self.batch, self.debug = pipe, run_dir, console, batch, debug
        self.lease = lease  # a Ray shard's share of the cluster's limits and budget
        self._lock = lock_run_dir(run_dir)
        self.state = RunState(run_dir)
        self.log = CallLog(run_dir / "calls.sqlite")
        self.shared = None
        if pipe.cfg.cache_dir:
            shared_dir = pipe.cfg.path(pipe.cfg.cache_dir)
            shared_dir.mkdir(parents=True, exist_ok=True)
            self.shared = CallLog(shared_dir / "calls.sqlite")
        self.stats = Stats(["questions", *pipe.record_stages, "export"])
        for name, counters in (self.state.get_meta("counters") or {}).items():  # an earlier invocation's
            self.stats[name].counters.update(counters)
        self.budget = lease.budget if lease is not None else Budget(pipe.cfg.max_cost, spent=self.log.spent())
        self.stopped: str | None = None
        self.judge_quality: dict | None = None
        self.resumed = 0

    def use_batch_apis(self) -> None:
        from factory.models.batch import BatchModel

        b = self.pipe.cfg.batch
        for spec, model in self.pipe.models.items():
            self.pipe.models[spec] = BatchModel(model, self.dir / "batches.sqlite", poll_s=b.poll_s, flush_s=b.flush_s,
                                                max_requests=b.max_requests, max_resubmits=b.max_resubmits)

    async def execute(self, source: Source | None = None) -> None:
        """Every record of `source` (default: the pipeline's questions stage) through every stage."""
        pipe = self.pipe
        if self.batch:
            self.use_batch_apis()
        caller = pipe.caller(self.log, self.stats, self.budget, shared=self.shared, lease=self.lease,
                             debug=debug_printer(self.console, self.dir / "debug.log") if self.debug else None)
        stages, source = pipe.stages(), source or pipe.source()
        window = 1 if self.debug else BATCH_WINDOW if self.batch else max(64, 4 * pipe.cfg.concurrency)
        slots = asyncio.Semaphore(window)
        self.state.clear_call_failures()
        with Display(self.stats, self.console) as display:
            display.stage("questions", None)
            for s in stages:
                display.stage(s.name, None)
            watchdog = asyncio.create_task(self.watchdog(caller))
            produced = 0
            try:
                async with asyncio.TaskGroup() as tg:
                    try:
                        async for rec in source.produce(caller):
                            produced += 1
                            display.advance("questions")
                            if self.state.has(rec.id):  # finished before a kill; resumed runs skip it
                                self.resumed += 1
                                display.advance_all([s.name for s in stages])
                                continue
                            await slots.acquire()
                            if self.stopped:
                                slots.release()
                                break
                            task = tg.create_task(self.one(rec, stages, caller, display))
                            task.add_done_callback(lambda _: slots.release())
                    except BudgetExceeded:
                        self.stopped = "budget"
                    display.totals(produced, [s.name for s in stages])
            except BaseExceptionGroup as group:
                raise first_error(group) from None
            finally:
                watchdog.cancel()
                failing = sys.exc_info()[1]
                try:
                    for key, reason in source.failures:
                        self.state.fail_call(key, source.name, reason)
                    self.save_counters()
                except (sqlite3.Error, OSError):
                    if failing is None:  # a full disk while already failing: report the first error only
                        raise

    async def one(self, rec: Record, stages: list[Stage], caller, display: Display) -> None:
        """Carry one record through every stage; its outcome is committed once, when it ends."""
        for i, s in enumerate(stages):
            try:
                await s.process(rec, caller)
            except BudgetExceeded:
                self.stopped = "budget"  # left unfinished: a resumed run picks it up
                return
            except ModelCallError as e:
                if e.fatal:
                    raise FactoryError(f"{e}\nthe run stopped: every further call would fail the same way. "
                                       "Fix the key, model name or base URL and run again.") from None
                self.state.finish(rec, "failed", s.name, str(e))
                display.advance_all([later.name for later in stages[i:]])
                return
            if rec.dropped:
                self.state.finish(rec, "dropped", s.name, rec.dropped.reason)
                display.advance_all([later.name for later in stages[i:]])
                return
            display.advance(s.name)
        self.state.finish(rec, "done", "done")

    async def watchdog(self, caller) -> None:
        """Every few seconds: save counters; when no call has finished for `watchdog_s`, say what is
        in flight and for how long."""
        limit, warned, told = self.pipe.cfg.watchdog_s, 0.0, 0.0
        while True:
            await asyncio.sleep(min(5.0, limit / 4))
            self.save_counters()
            down = [e.outage.describe() for e in caller.endpoints.values() if e.outage is not None and e.outage.down]
            if down:  # an outage explains the silence: say so, not what is in flight
                if time.monotonic() - told > OUTAGE_NOTE_S:
                    told = time.monotonic()
                    self.console.print("[yellow]endpoint not answering, calls paused: " + "; ".join(down) + "[/yellow]",
                                       highlight=False)
                continue
            quiet = time.monotonic() - caller.last_done
            if caller.active and quiet > limit and time.monotonic() - warned > limit:
                warned = time.monotonic()
                ages = sorted(((time.monotonic() - t0, stage, purpose) for stage, purpose, t0 in caller.active.values()),
                              reverse=True)
                lines = [f"  {age:6.1f} s  {stage} {purpose}" for age, stage, purpose in ages[:10]]
                more = f"\n  ... and {len(ages) - 10} more" if len(ages) > 10 else ""
                limits = "; ".join(f"{spec}: {e.limiter.snapshot()}" for spec, e in caller.endpoints.items())
                self.console.print(f"[yellow]watchdog: no call finished for {quiet:.0f} s; {len(ages)} in flight "
                                   f"(oldest first):[/yellow]\n" + "\n".join(lines) + more + f"\n  rate limits: {limits}",
                                   highlight=False)

    def save_counters(self) -> None:
        self.state.set_meta("counters", {name: dict(st.counters) for name, st in self.stats.stages.items()})

    def write_lineage(self) -> int:
        """failed.jsonl: what to retry (failed records with their stage and reason, and failed generation
        calls). The done and dropped records, every call and round, stay in state.sqlite, their one full
        copy (RunDir.lineage reads them); a records.jsonl that an older version wrote is removed, since
        the state holds every record it held."""
        failed = 0
        failed_tmp = self.dir / "failed.jsonl.tmp"
        with failed_tmp.open("w") as fails:
            for _, stage, reason, rec in self.state.records("failed"):
                failed += 1
                fails.write(json.dumps({"stage": stage, "reason": reason, "record": rec.model_dump()}) + "\n")
            for key, stage, reason in self.state.call_failures():
                failed += 1
                fails.write(json.dumps({"stage": stage, "call": key, "reason": reason}) + "\n")
        os.replace(failed_tmp, self.dir / "failed.jsonl")
        (self.dir / "records.jsonl").unlink(missing_ok=True)
        return failed

    def close(self) -> None:
        self.log.close()
        if self.shared:
            self.shared.close()
        self.state.close()
        self._lock.close()


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The exception to report from a task group: a user-facing FactoryError first."""
    leaves = []

    def walk(g: BaseExceptionGroup) -> None:
        for e in g.exceptions:
            walk(e) if isinstance(e, BaseExceptionGroup) else leaves.append(e)

    walk(group)
    return next((e for e in leaves if isinstance(e, FactoryError)), leaves[0])


def debug_printer(console: Console, path: Path):
    """--debug: every request and response in full, on the console and in RUN_DIR/debug.log."""
    log = path.open("a")

    def show(label: str, messages: list[Message], params: GenParams, result: Completion) -> None:
        turns = "\n".join(f"[{m['role']}] {m['content']}" for m in messages)
        text = (f"--- {label} {params}\n{turns}\n--- response ({result.finish_reason}, {result.prompt_tokens} in, "
                f"{result.completion_tokens} out)\n{result.text}\n")
        console.print(text, markup=False, highlight=False)
        log.write(text)
        log.flush()

    return show
