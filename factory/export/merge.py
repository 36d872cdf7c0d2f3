"""`factory merge RUN_DIR... --out DIR`: one dataset from several finished runs, deduplicated across
them (the first run listed wins a tie), with a card that names every run it came from."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from factory.config import PipelineConfig
from factory.constitution import Constitution, load_constitution
from factory.engine.rundir import FINISHED, now, write_json
from factory.engine.stats import StageStats
from factory.errors import FactoryError
from factory.export.card import merged_card
from factory.export.clean import Cleaner
from factory.export.writer import export
from factory.records import Record, kept_records
from factory.review.decisions import Review
from factory.review.store import ReviewStore


def read_run(run_dir: Path) -> dict:
    path = run_dir / "manifest.json"
    if not path.is_file():
        raise FactoryError(f"{run_dir}: not a run directory (no manifest.json)")
    manifest = json.loads(path.read_text())
    if manifest.get("status") not in FINISHED:
        raise FactoryError(f"{run_dir}: the run is {manifest.get('status')!r}; finish it first "
                           f"(factory run --resume {run_dir})")
    return manifest


def run_constitution(run_dir: Path, manifest: dict) -> Constitution:
    """The constitution a finished run used, from the file its manifest names."""
    path = Path(manifest["constitution"]["path"])
    if not path.is_file():
        raise FactoryError(f"{path}: the constitution of {run_dir} is gone; restore it (sha256 "
                           f"{manifest['constitution']['sha256'][:12]}) and run the command again")
    return load_constitution(path)


def merge(run_dirs: list[Path], out: Path) -> tuple[dict, dict]:
    """(counts per config and split, export stats). The first run's export settings apply."""
    if out.exists() and any(out.iterdir()):
        raise FactoryError(f"{out} exists and is not empty; choose a new --out folder")
    if len({d.resolve() for d in run_dirs}) != len(run_dirs):
        raise FactoryError("a run directory is listed twice")
    manifests = [read_run(d) for d in run_dirs]
    first = manifests[0]
    cfg = PipelineConfig.model_validate(first["config"])
    constitution = run_constitution(run_dirs[0], first)
    config_dir = Path(first.get("config_dir", "."))

    def records() -> Iterator[Record]:
        for d in run_dirs:
            yield from kept_records(d / "records.jsonl")

    def card(counts: dict, example: dict | None) -> str:
        return merged_card(out.name, list(zip(run_dirs, manifests)), counts, st.to_dict(), example)

    st = StageStats()
    out.mkdir(parents=True, exist_ok=True)
    cleaner = Cleaner(cfg.stages.export.clean, lambda p: (config_dir / p).resolve())
    decisions = {rid: d for run in run_dirs for rid, d in ReviewStore.read_all(run).items()}  # reviewers' too
    counts = export(records, out, cfg.stages.export, constitution, first["stage_models"]["answer"], st, card,
                    cleaner=cleaner, review=Review(decisions))
    write_json(out / "manifest.json", {"status": "merged", "finished": now(), "datasets": counts,
                                       "runs": [{"run_dir": str(d.resolve()), "constitution": m["constitution"]["label"],
                                                 "constitution_sha256": m["constitution"]["sha256"],
                                                 "models": m["models"]} for d, m in zip(run_dirs, manifests)]})
    write_json(out / "stats.json", {"datasets": counts, "stages": {"merge": st.to_dict()}})
    return counts, st.to_dict()
