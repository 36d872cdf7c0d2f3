"""Which executor drives a run: the flag for a new run, the manifest for a resumed one."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rich.console import Console

from factory.config import InputSource
from factory.engine.pipeline import Overrides, Pipeline
from factory.engine.rundir import RunDir
from factory.engine.runner import Outcome
from factory.errors import FactoryError
from factory.executors.local import resume_local, run_local


def run(pipe: Pipeline, out: Path | None, console: Console, *, executor: str | None = None, batch: bool = False,
        debug: bool = False, address: str | None = None, workers: int | None = None,
        shards: int | None = None) -> Outcome:
    """A new run on `executor` (default: local)."""
    if executor == "ray":
        from factory.executors.ray_run import refuse, run_ray

        refuse(batch, debug)
        return run_ray(pipe, out, console, address=address, workers=workers, shards=shards)
    return run_local(pipe, out, console, batch=batch, debug=debug)


def resume(run_dir: Path, console: Console, ov: Overrides, *, retry_failed: bool = False,
           debug: bool = False, ray_address: str | None = None, workers: int | None = None) -> Outcome:
    """Continue a run that was killed, stopped at its budget or interrupted. Every call that completed
    is served from its call log; finished records are skipped. `retry_failed` first forgets the
    failed records so they are processed again."""
    run = RunDir.open(run_dir)
    manifest = run.manifest
    ov = replace(ov, prompts=saved_prompts(manifest.get("prompts")), limit=manifest.get("limit"))
    pipe = Pipeline.prepare(run.config(), ov)
    changed = [k for k, v in pipe.inputs().items() if v != manifest["inputs"].get(k)]
    if changed:
        raise FactoryError(f"{run_dir}: {', '.join(changed)} changed since the run started, so resuming would mix "
                           "two inputs. Restore them, or start a new run (with a shared cache_dir it reuses the calls)")
    if manifest.get("executor", {}).get("kind") == "ray" and not run.finished:
        # An unfinished Ray run continues on Ray. A finished one is laid out as a local run, so
        # `retry-failed` reprocesses its failed records here, locally.
        if retry_failed or debug:
            raise FactoryError(f"{run_dir} is an unfinished Ray run: finish it first with factory run --resume {run_dir}")
        from factory.executors.ray_run import resume_ray

        return resume_ray(pipe, run, console, address=ray_address, workers=workers)
    return resume_local(pipe, run, console, retry_failed=retry_failed, debug=debug)


def saved_prompts(saved: str | list | None) -> Path | list[InputSource] | None:
    """The prompt sources a run started with: a path (runs before several sources), or the sources."""
    if isinstance(saved, list):
        return [InputSource.model_validate(s) for s in saved]
    return Path(saved) if saved else None
