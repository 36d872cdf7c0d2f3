"""The local executor: a run in this process, and how every run ends (export, report, tables), which
the Ray executor shares. `dispatch` picks the executor."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import uvloop
from rich.console import Console

from factory.engine.pipeline import Pipeline
from factory.engine.progress import gates_summary, judge_table, summary_table
from factory.engine.rundir import RunDir, create_run_dir, now, write_json
from factory.engine.runner import Outcome, Run
from factory.errors import FactoryError
from factory.export.card import card_body
from factory.export.writer import export
from factory.failures import classify, log_traceback
from factory.judging.quality import JudgeReport
from factory.liblog import LibraryLog
from factory.records import Record
from factory.report import write_report


def finish(run: Run, manifest: dict) -> Outcome:
    """Counts from the state (exact over every invocation), then datasets, lineage and failures,
    each written whole and moved in place."""
    pipe = run.pipe
    for name, (n_in, n_out, dropped) in run.state.stage_counts(pipe.record_stages).items():
        st = run.stats[name]
        st.records_in, st.records_out, st.dropped = n_in, n_out, dropped
    failed = run.write_lineage()
    counts: dict = {}
    report = JudgeReport() if pipe.cfg.stages.judge is not None else None
    if run.stopped:
        status = "stopped_at_budget"
    else:
        status = "complete" if not failed else "complete_with_failures"

        def card(c: dict, example: dict | None) -> str:
            return card_body(run.dir.name, manifest, pipe.constitution, c, run.stats.to_dict(), example)

        def done() -> Iterator[Record]:
            return (rec for _, _, _, rec in run.state.records("done"))

        counts = export(done, run.dir, pipe.cfg.stages.export, pipe.constitution, pipe.specs["answer"],
                        run.stats["export"], card, report, pipe.cleaner)
    stats = run.stats.to_dict() | {"datasets": counts, "failed_records": failed, "resumed_records": run.resumed,
                                    "run_totals": run.log.totals(), "spent_usd": round(run.log.spent(), 6),
                                    "saved_usd": round(run.log.saved(), 6)}
    if report is not None:
        run.judge_quality = stats["judge_quality"] = report.to_dict()
    write_json(run.dir / "stats.json", stats)
    manifest.update(status=status, finished=now(), datasets=counts, spent_usd=stats["spent_usd"],
                    saved_usd=stats["saved_usd"])
    write_json(run.dir / "manifest.json", manifest)
    run.close()
    try:
        write_report(run.dir)  # report.html, from the run directory alone
    except Exception as e:  # the datasets are written: a report that fails must not fail the run
        run.console.print(f"[yellow]report.html not written ({type(e).__name__}: {e}); "
                           f"try again with: factory report {run.dir}[/yellow]")
    return Outcome(run.dir, status, failed, counts)


def _invoke(run: Run, manifest: dict) -> Outcome:
    async def main() -> None:
        try:
            await run.execute()
        finally:
            await run.pipe.aclose()

    def work() -> None:
        # uvloop: the event loop in C, about 10% less CPU per call with many requests in flight
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())

    return conclude(run, manifest, work)


def conclude(run: Run, manifest: dict, work: Callable[[], None]) -> Outcome:
    """Do the run's `work`; an error or Ctrl-C leaves the manifest saying so (the run can be resumed),
    otherwise finish it (export, report) and print its tables."""
    try:
        work()
    except BaseException as e:
        stopped(run.dir, manifest, e, run.close)
        raise
    outcome = finish(run, manifest)
    run.console.print(summary_table(run.stats))
    run.console.print(gates_summary(run.stats, run.pipe.cfg.stages.judge is not None), highlight=False)
    if run.judge_quality is not None:
        run.console.print(judge_table(run.judge_quality))
    return outcome


def stopped(run_dir: Path, manifest: dict, e: BaseException, close: Callable[[], None] | None = None) -> None:
    """An honest manifest for a run stopped by `e` (aborted, interrupted, stopped and resumable, or
    failed; never left "running"), the traceback in RUN_DIR/debug.log for anything unexpected, and
    the run's files closed. Never raises: the error that stopped the run is the one to report."""
    failure = classify(e)
    e.run_dir = run_dir  # type: ignore[attr-defined]
    if not isinstance(e, FactoryError | KeyboardInterrupt):
        e.debug_log = log_traceback(e, run_dir / "debug.log")  # type: ignore[attr-defined]
    entry = {"status": failure.status, "finished": now()}
    if failure.status != "interrupted":
        entry["error"] = failure.message
    try:
        write_json(run_dir / "manifest.json", manifest | entry)
    except OSError:  # a full disk may refuse even this; a resume reads the run from its state, not this field
        pass
    if close is not None:
        try:
            close()
        except Exception:  # noqa: BLE001 - closing after a failure must not replace it
            pass


def run_local(pipe: Pipeline, out: Path | None, console: Console, *, batch: bool = False,
              debug: bool = False) -> Outcome:
    """A new run: load models, create the run directory, run every stage, export. Library warnings
    and progress bars go to the run's debug.log, not the console."""
    log = LibraryLog()
    with log.capture():
        pipe.load_models()
        run_dir = create_run_dir(out)
        log.attach(run_dir / "debug.log")
        manifest = pipe.manifest(run_dir, batch)
        try:
            write_json(run_dir / "manifest.json", manifest)
            started = Run(pipe, run_dir, console, batch=batch, debug=debug)
        except BaseException as e:
            stopped(run_dir, manifest, e)
            raise
        return _invoke(started, manifest)


def resume_local(pipe: Pipeline, run: RunDir, console: Console, *, retry_failed: bool = False,
                 debug: bool = False) -> Outcome:
    """Continue a run here, in this process (dispatch.resume has checked its inputs)."""
    log = LibraryLog()
    with log.capture():
        pipe.load_models()
        log.attach(run.path / "debug.log")
        return _resume_local(pipe, run, console, retry_failed, debug)


def _resume_local(pipe: Pipeline, run: RunDir, console: Console, retry_failed: bool, debug: bool) -> Outcome:
    manifest = run.manifest
    invocation = Run(pipe, run.path, console, batch=manifest.get("batch", False), debug=debug)
    if retry_failed:
        n = invocation.state.reset_failed()
        console.print(f"retrying {n} failed record(s) and any failed generation call")
    manifest |= {"status": "running", "resumed": manifest.get("resumed", 0) + 1, "config": pipe.cfg.model_dump(mode="json")}
    run.save_manifest()
    return _invoke(invocation, manifest)
