"""`factory export RUN_DIR`: write a finished run's datasets and card again from its records.jsonl,
applying the review decisions saved in the run directory. Atomic like every export (the new files
are moved in place whole); without decisions the datasets come out identical to the run's own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from factory.config import PipelineConfig
from factory.engine.rundir import now, write_json
from factory.engine.state import lock_run_dir
from factory.engine.stats import StageStats
from factory.export.card import card_body
from factory.export.clean import Cleaner
from factory.export.merge import read_run, run_constitution
from factory.export.writer import export
from factory.judging.quality import JudgeReport
from factory.records import Record, kept_records


def reexport(run_dir: Path) -> tuple[dict, dict]:
    """(counts per config and split, the export stage's stats)."""
    manifest = read_run(run_dir)  # a finished run, or a clear error
    lock = lock_run_dir(run_dir)  # no run or resume writes it meanwhile
    try:
        return _reexport(run_dir, manifest)
    finally:
        lock.close()


def _reexport(run_dir: Path, manifest: dict) -> tuple[dict, dict]:
    cfg = PipelineConfig.model_validate(manifest["config"])
    cfg._base_dir = Path(manifest.get("config_dir", "."))
    constitution = run_constitution(run_dir, manifest)
    stats = json.loads((run_dir / "stats.json").read_text())
    st = StageStats()
    report = JudgeReport() if cfg.stages.judge is not None else None

    def records() -> Iterator[Record]:
        return kept_records(run_dir / "records.jsonl")

    def card(counts: dict, example: dict | None) -> str:
        now_stats = stats | {"stages": stats["stages"] | {"export": st.to_dict()}}
        return card_body(run_dir.name, manifest, constitution, counts, now_stats, example)

    counts = export(records, run_dir, cfg.stages.export, constitution, manifest["stage_models"]["answer"], st, card,
                    report, Cleaner(cfg.stages.export.clean, cfg.path))
    stats["stages"]["export"] = st.to_dict()
    stats["datasets"] = counts
    if report is not None:
        stats["judge_quality"] = report.to_dict()
    write_json(run_dir / "stats.json", stats)
    manifest.update(datasets=counts, exported=now())
    write_json(run_dir / "manifest.json", manifest)
    return counts, st.to_dict()
