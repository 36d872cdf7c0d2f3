"""Shards: one run split into sub-runs, each an ordinary run directory (RUN/shards/0003/) driven by the
local runner, and merged back into RUN. Nothing here imports Ray: `run_shard` is what a Ray task calls.

- The plan: the driver runs the questions stage once (so prompts are generated once, not per shard;
  its calls go to RUN/calls.sqlite) and writes each record to the input file of the shard that its
  prompt id hashes to. The same input gives the same shards whatever the number of workers, and
  duplicates of a prompt meet in one shard.
- A shard: `run_shard` runs every record stage over its input into its own state.sqlite and
  calls.sqlite, with export off. Run again (a retried task, a resumed run), it skips its finished
  records and serves its completed calls from its log, like `factory run --resume`.
- The merge: a finished shard's records, calls, searches and failed attempts are copied into RUN's
  state.sqlite and calls.sqlite, and the shard is marked merged in the same transaction; then its
  folder is deleted. The driver exports once over every record (so dedup is global), exactly as a
  local run does."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import socket
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import uvloop
from rich.console import Console

from factory.config import GenerationModes, PipelineConfig
from factory.engine.caller import Caller
from factory.engine.limits import Lease
from factory.engine.pipeline import Overrides, Pipeline
from factory.engine.rundir import write_json
from factory.engine.runner import Run
from factory.engine.stats import StageStats, Stats
from factory.errors import FactoryError
from factory.models.spec import ModelSpec
from factory.records import Record

SHARDS = "shards"
PLAN = "plan.json"
INPUT = "input.jsonl"
RECORDS_PER_SHARD = 1000  # default shard size: a retried shard redoes at most this many records' open calls
SHARDS_PER_WORKER = 2  # at least: a worker whose shard ends early takes another, so the run's tail is short
FLUSH_LINES = 20_000  # records buffered by the plan before they are appended to the shard files
ENV_PREFIXES = ("OPENAI_", "ANTHROPIC_", "TAVILY_", "BRAVE_", "SEARXNG_", "WIKIPEDIA_", "FACTORY_", "HF_")
SUMMED = ("calls", "cached_calls", "failed_calls", "retries", "rate_limited", "cost", "saved", "prompt_tokens",
          "completion_tokens", "call_seconds")


def shard_dir(run_dir: Path, index: int) -> Path:
    return run_dir / SHARDS / f"{index:04d}"


def shard_of(record_id: str, shards: int) -> int:
    """Which shard a record belongs to: its prompt id (a hash) modulo the number of shards."""
    return int(record_id, 16) % shards


def default_shards(pipe: Pipeline, workers: int) -> int:
    """At least SHARDS_PER_WORKER per worker, and at most about RECORDS_PER_SHARD records each."""
    q = pipe.cfg.stages.questions
    expected = pipe.from_file.count if pipe.from_file else len(pipe.seeds) + (q.total_generate if pipe.generating else 0)
    return max(1, min(expected, max(SHARDS_PER_WORKER * workers, math.ceil(expected / RECORDS_PER_SHARD))))


def provider_env() -> dict[str, str]:
    """The variables a shard needs to reach the same backends (keys, base URLs, caches). Passed to its
    task as an argument, never through a runtime_env, which Ray shows in its dashboard."""
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}


# --- the plan (driver) ---------------------------------------------------------------------------


def read_plan(run_dir: Path) -> dict | None:
    path = run_dir / SHARDS / PLAN
    return json.loads(path.read_text()) if path.is_file() else None


def make_plan(run: Run, shards: int) -> dict:
    """Run the questions stage once and split its records into `shards` input files. A plan cut short
    (the driver killed) is made again from scratch; its generation calls come from the call log."""
    root = run.dir / SHARDS
    shutil.rmtree(root, ignore_errors=True)
    for i in range(shards):
        shard_dir(run.dir, i).mkdir(parents=True)
    counts = [0] * shards

    async def produce() -> None:
        pipe = run.pipe
        caller = pipe.caller(run.log, run.stats, run.budget, shared=run.shared)
        source = pipe.source()
        buffers: dict[int, list[str]] = {}
        buffered = 0
        try:
            async for rec in source.produce(caller):  # BudgetExceeded: the driver stops at the budget
                i = shard_of(rec.id, shards)
                buffers.setdefault(i, []).append(rec.model_dump_json() + "\n")
                counts[i] += 1
                buffered += 1
                if buffered >= FLUSH_LINES:
                    _flush(run.dir, buffers)
                    buffered = 0
            _flush(run.dir, buffers)
        finally:
            for key, reason in source.failures:
                run.state.fail_call(key, source.name, reason)
            await pipe.aclose()

    run.state.clear_call_failures()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(produce())
    for i in range(shards):
        part = shard_dir(run.dir, i) / (INPUT + ".part")
        part.replace(part.with_name(INPUT)) if part.exists() else part.with_name(INPUT).touch()
    q = run.stats["questions"]
    plan = {"shards": shards, "records": counts,
            "questions": {"in": q.records_in, "out": q.records_out, "dropped": dict(q.dropped),
                          "counters": dict(q.counters), "calls": q.calls, "cost": q.cost}}
    write_json(root / PLAN, plan)  # last: a plan is complete once this file exists
    return plan


def _flush(run_dir: Path, buffers: dict[int, list[str]]) -> None:
    for i, lines in buffers.items():
        with (shard_dir(run_dir, i) / (INPUT + ".part")).open("a") as f:
            f.writelines(lines)
    buffers.clear()


def restore_questions(stats: Stats, plan: dict) -> None:
    """A resumed driver does not run the questions stage again: its counts come from the plan."""
    q, saved = stats["questions"], plan["questions"]
    q.records_in, q.records_out = saved["in"], saved["out"]
    q.dropped, q.counters = Counter(saved["dropped"]), Counter(saved["counters"])


# --- one shard (a Ray worker) --------------------------------------------------------------------


class RecordFile:
    """A shard's input: the records the driver's questions stage produced, one JSON object per line."""

    name = "questions"

    def __init__(self, path: Path):
        self.path = path
        self.failures: list[tuple[str, str]] = []

    async def produce(self, caller: Caller) -> AsyncIterator[Record]:
        with self.path.open() as f:
            for line in f:
                yield Record.model_validate_json(line)


def api_specs(pipe: Pipeline) -> list[str]:
    """The API endpoints the record stages call (their teachers' anchor models too): the ones whose limits the
    cluster shares."""
    return [spec for spec in pipe.record_specs() if not ModelSpec.parse(spec).local]


def run_shard(run_dir: str, index: int, config: dict, config_dir: str, env: dict[str, str], limits) -> dict:
    """Run (or continue) shard `index` of RUN_DIR to its end, leasing its share of each API endpoint's
    limits and of the budget from `limits`, the run's ClusterLimits actor (factory/executors/cluster.py).
    Returns its stats; the driver merges its files."""
    os.environ.update(env)
    folder = shard_dir(Path(run_dir), index)
    if not (folder / INPUT).is_file():
        raise FactoryError(f"{folder / INPUT} is not visible on Ray node {socket.gethostname()}: the run directory "
                           "must be on a filesystem that every node mounts at the same path (or use one node)")
    cfg = PipelineConfig.model_validate(config).based_at(Path(config_dir))
    pipe = Pipeline.prepare(cfg, Overrides(), needs_seeds=False)
    pipe.cfg.stages.questions.generate = 0  # the driver generated the prompts; a shard only reads them
    pipe.cfg.stages.questions.modes = GenerationModes()
    pipe.load_models()
    lease = Lease(lambda report: limits.lease.remote(report), index, api_specs(pipe), pipe.cfg.max_cost,
                  lambda: run.state.count())
    run = Run(pipe, folder, Console(quiet=True), lease=lease)

    async def main() -> None:
        lease.start()
        try:
            await run.execute(RecordFile(folder / INPUT))
        finally:
            try:
                await lease.close()  # every unused permit, slot and allotment goes back to the cluster
            finally:
                await pipe.aclose()

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
        run.save_counters()
    finally:
        run.close()
    stages = {name: st for name, st in run.stats.stages.items() if name not in ("questions", "export")}
    return {"index": index, "stopped": run.stopped, "resumed": run.resumed, "stages": stages}


# --- the merge (driver) --------------------------------------------------------------------------


def merged(run: Run, index: int) -> bool:
    return run.state.get_meta(f"shard:{index:04d}") is not None


def add_stats(stats: Stats, shard_stages: dict[str, StageStats]) -> None:
    """A shard's calls, tokens, cost, retries and counters, added to the run's."""
    for name, st in shard_stages.items():
        total = stats[name]
        for field in SUMMED:
            setattr(total, field, getattr(total, field) + getattr(st, field))
        total.counters.update(st.counters)


def merge_shard(run: Run, index: int, records: int) -> None:
    """Copy a finished shard into the run: calls, searches and failed attempts into calls.sqlite, then
    its records (and the run's counters, which already include the shard's) into state.sqlite with the
    shard's merged mark, in one transaction. Merging a shard twice changes nothing."""
    folder = shard_dir(run.dir, index)
    run.log.merge_from(folder / "calls.sqlite")
    counters = {name: dict(st.counters) for name, st in run.stats.stages.items()}
    run.state.merge_from(folder / "state.sqlite", {f"shard:{index:04d}": {"records": records}, "counters": counters})
    shutil.rmtree(folder, ignore_errors=True)  # all of it is in the run now: no second copy on disk
