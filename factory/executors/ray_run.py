"""`factory run --executor ray`: the same pipeline, as shards on a Ray cluster (factory/executors/shards.py).

Shards are Ray *tasks*, at least two per worker, at most `workers` at a time. Ray retries a task
whose worker died (MAX_RETRIES), and the retried task continues its shard where it stopped. The
driver (this process) plans the shards, merges each as it finishes, and exports once at the end, so
the run directory ends up as a local run's. Every API endpoint's rate limits and in-flight cap, and
the budget, are the cluster's: one ClusterLimits actor (factory/executors/cluster.py) holds them and
the shards lease from it; the driver's progress bar counts the records every shard has finished.
Ray is imported here only; `import factory` never touches it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from factory.config import LimitsConfig
from factory.engine.calllog import spent_in
from factory.engine.pipeline import Pipeline
from factory.engine.rundir import RunDir, create_run_dir, write_json
from factory.engine.runner import Outcome, Run
from factory.errors import BudgetExceeded, FactoryError
from factory.executors.cluster import ClusterLimits
from factory.executors.local import conclude
from factory.executors.shards import (
    SHARDS,
    add_stats,
    api_specs,
    default_shards,
    make_plan,
    merge_shard,
    merged,
    provider_env,
    read_plan,
    restore_questions,
    run_shard,
    shard_dir,
)
from factory.liblog import LibraryLog
from factory.models import load_model
from factory.models.spec import ModelSpec

MAX_RETRIES = 3  # a shard whose worker dies is run again this many times, continuing where it stopped
PROGRESS_S = 0.5  # the driver's progress bar asks the shards' progress this often


def connect(address: str | None):
    """The `ray` module, connected: to ADDR, or to a Ray instance started on this machine."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no telemetry
    try:
        import ray
    except ImportError:
        raise FactoryError("--executor ray needs Ray: pip install 'constitution-factory[ray]' (or pip install "
                           "'ray>=2.50,<3')") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise FactoryError(f"cannot connect to the Ray cluster at {address}: {e}\nStart one with `ray start "
                               "--head` and pass its address, or drop --ray-address to start Ray here") from None
    return ray


def check_models(pipe: Pipeline) -> None:
    """Fail before the run directory exists: every API backend is built here (a missing key fails);
    local models are loaded by the shards that use them. The driver keeps the questions model only."""
    questions = pipe.specs["questions"] if pipe.generating else None
    for spec in pipe.used_specs():
        if spec == questions:
            pipe.models[spec] = load_model(spec)
        elif not ModelSpec.parse(spec).local:
            load_model(spec)


def refuse(batch: bool, debug: bool) -> None:
    if batch:
        raise FactoryError("--batch needs no cluster: the provider runs the batches; drop --executor ray")
    if debug:
        raise FactoryError("--debug runs one record at a time: drop --executor ray")


def start(pipe: Pipeline, address: str | None, workers: int | None):
    """(ray, workers): the checks a new and a resumed run share, then Ray connected."""
    ray = connect(address)
    workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    check_models(pipe)
    return ray, workers


def run_ray(pipe: Pipeline, out: Path | None, console: Console, *, address: str | None = None,
            workers: int | None = None, shards: int | None = None) -> Outcome:
    """A new run on Ray: plan, run the shards, merge them, export once."""
    log = LibraryLog()  # library warnings and progress bars go to the run's debug.log, as in a local run
    with log.capture():
        ray, workers = start(pipe, address, workers)
        run_dir = create_run_dir(out)
        log.attach(run_dir / "debug.log")
        manifest = pipe.manifest(run_dir, False)
        manifest["executor"] = {"kind": "ray", "address": address, "workers": workers,
                                "shards": shards or default_shards(pipe, workers)}
        write_json(run_dir / "manifest.json", manifest)
        return drive(ray, Run(pipe, run_dir, console), manifest, workers)


def resume_ray(pipe: Pipeline, run_dir: RunDir, console: Console, *, address: str | None = None,
               workers: int | None = None) -> Outcome:
    """Continue a Ray run: merged shards are skipped, the others continue where they stopped."""
    log = LibraryLog()
    with log.capture():
        ray, workers = start(pipe, address, workers)
        log.attach(run_dir.path / "debug.log")
        run = Run(pipe, run_dir.path, console)
        manifest = run_dir.manifest
        manifest |= {"status": "running", "resumed": manifest.get("resumed", 0) + 1,
                     "config": pipe.cfg.model_dump(mode="json")}
        run_dir.save_manifest()
        return drive(ray, run, manifest, workers)


def drive(ray, run: Run, manifest: dict, workers: int) -> Outcome:
    def work() -> None:
        plan = read_plan(run.dir)
        if plan is None:
            try:
                plan = make_plan(run, manifest["executor"]["shards"])
            except BudgetExceeded:  # while generating prompts: no plan yet, a resume makes it again
                run.stopped = "budget"
                return
        else:
            restore_questions(run.stats, plan)
        run_shards(ray, run, plan, workers)

    outcome = conclude(run, manifest, work)
    if outcome.status != "stopped_at_budget" or read_plan(run.dir) is None:
        shutil.rmtree(run.dir / SHARDS, ignore_errors=True)  # all merged: the layout is a local run's
    return outcome


def run_shards(ray, run: Run, plan: dict, workers: int) -> None:
    """At most `workers` shard tasks at a time; each is merged as soon as it finishes."""
    counts: list[int] = plan["records"]
    for i, n in enumerate(counts):
        if n == 0 and not merged(run, i):
            run.state.set_meta(f"shard:{i:04d}", {"records": 0})
    pending = [i for i, n in enumerate(counts) if not merged(run, i)]
    run.resumed += sum(n for i, n in enumerate(counts) if i not in pending)
    if not pending:
        return
    at_once = min(workers, len(pending))
    cpus = max(1.0, float(ray.cluster_resources().get("CPU", 1)))
    pipe = run.pipe
    local = any(ModelSpec.parse(spec).local for spec in pipe.record_specs())
    gpus = 1 if local and ray.cluster_resources().get("GPU", 0) >= 1 else 0  # one per shard's own model copy
    task = ray.remote(run_shard).options(num_cpus=min(1.0, cpus / at_once), num_gpus=gpus, max_retries=MAX_RETRIES,
                                         retry_exceptions=False)
    limits = start_limits(ray, run, pending)
    args = (str(run.dir.resolve()), pipe.cfg.model_dump(mode="json"), str(pipe.cfg.path(".")), provider_env(), limits)
    for name in pipe.record_stages:
        run.stats[name].touch()
    running: dict = {}
    done = sum(counts) - sum(counts[i] for i in pending)  # records of merged shards
    progress = Progress(TextColumn("records"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[shards]}"),
                        TimeElapsedColumn(), console=run.console, transient=False)
    bar = progress.add_task("records", total=sum(counts), completed=done, shards="")
    try:
        with progress:
            while pending or running:
                while pending and len(running) < at_once and not run.stopped:
                    i = pending.pop(0)
                    running[task.remote(args[0], i, *args[1:])] = i
                if not running:
                    break
                ready, _ = ray.wait(list(running), num_returns=1, timeout=PROGRESS_S)
                if ready:
                    i = running.pop(ready[0])
                    result = _result(ray, ready[0], i, run.dir)
                    add_stats(run.stats, result["stages"])
                    run.resumed += result["resumed"]
                    if result["stopped"]:  # at the budget: unmerged, a resume continues it
                        run.stopped = result["stopped"]
                    else:
                        merge_shard(run, i, counts[i])
                        done += counts[i]
                finished = ray.get(limits.progress.remote())
                progress.update(bar, completed=done + sum(finished.get(i, 0) for i in running.values()),
                                shards=f"{len(counts) - len(pending) - len(running)}/{len(counts)} shards, "
                                       f"{len(running)} running")
    finally:
        for ref in running:
            ray.cancel(ref, force=True)
        for name in pipe.record_stages:
            run.stats[name].touch()


def start_limits(ray, run: Run, pending: list[int]):
    """The run's ClusterLimits actor: every API endpoint the shards call, and the budget, less what
    the call logs show spent (the driver's, and the unmerged shards' from an earlier invocation)."""
    cfg = run.pipe.cfg
    endpoints = {}
    for spec in api_specs(run.pipe):
        limits = cfg.limits.get(spec, LimitsConfig())
        endpoints[spec] = {"rpm": limits.rpm, "tpm": limits.tpm, "concurrency": cfg.concurrency}
    spent = run.log.spent() + spent_in(shard_dir(run.dir, i) / "calls.sqlite" for i in pending)
    actor = ray.remote(ClusterLimits).options(num_cpus=0, max_restarts=0)  # state lost on a restart: none
    return actor.remote(endpoints, cfg.max_cost, spent)


def _result(ray, ref, index: int, run_dir: Path) -> dict:
    """A shard's result; a user-facing error raised in it is raised here as it was."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if isinstance(e.cause, BaseException) else e
        if isinstance(cause, FactoryError):
            raise FactoryError(str(cause)) from None
        raise
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as e:
        raise FactoryError(f"shard {index} failed {MAX_RETRIES + 1} times: its worker died ({type(e).__name__}). "
                           f"Finished shards are kept; continue with: factory run --resume {run_dir}") from None
