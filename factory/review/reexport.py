"""`factory export RUN_DIR`: write a finished run's datasets and card again from its records,
applying the review decisions saved in the run directory. Atomic like every export (the new files
are moved in place whole); without decisions the datasets come out identical to the run's own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from factory.engine.rundir import RunDir, now, write_json
from factory.engine.state import lock_run_dir
from factory.engine.stats import StageStats
from factory.export.card import card_body
from factory.export.writer import export
from factory.hygiene.clean import Cleaner
from factory.judging.quality import JudgeReport
from factory.records import Record


def reexport(run_dir: Path) -> tuple[dict, dict]:
    """(counts per config and split, the export stage's stats)."""
    run = RunDir.open(run_dir, finished=True)  # a finished run, or a clear error
    lock = lock_run_dir(run_dir)  # no run or resume writes it meanwhile
    try:
        return _reexport(run)
    finally:
        lock.close()


def _reexport(run: RunDir) -> tuple[dict, dict]:
    run_dir, manifest, cfg, constitution = run.path, run.manifest, run.config(), run.constitution()
    stats = json.loads((run_dir / "stats.json").read_text())
    st = StageStats()
    report = JudgeReport() if cfg.stages.judge is not None else None

    def records() -> Iterator[Record]:
        return run.records()

    def card(counts: dict, example: dict | None) -> str:
        now_stats = stats | {"stages": stats["stages"] | {"export": st.to_dict()}}
        return card_body(run_dir.name, manifest, constitution, counts, now_stats, example)

    counts = export(records, run_dir, cfg.stages.export, constitution, run.generator, st, card,
                    report, Cleaner(cfg.stages.export.clean, cfg.path))
    stats["stages"]["export"] = st.to_dict()
    stats["datasets"] = counts
    if report is not None:
        stats["judge_quality"] = report.to_dict()
    write_json(run_dir / "stats.json", stats)
    manifest.update(datasets=counts, exported=now())
    run.save_manifest()
    return counts, st.to_dict()
