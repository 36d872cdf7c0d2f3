"""`factory merge RUN_DIR... --out DIR`: one dataset from several finished runs, deduplicated across
them (the first run listed wins a tie), with a card that names every run it came from."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from factory.engine.rundir import RunDir, now, write_json
from factory.engine.stats import StageStats
from factory.errors import FactoryError
from factory.export.card import merged_card
from factory.export.writer import export
from factory.hygiene.clean import Cleaner
from factory.records import Record
from factory.review.decisions import Review
from factory.review.store import ReviewStore


def merge(run_dirs: list[Path], out: Path) -> tuple[dict, dict]:
    """(counts per config and split, export stats). The first run's export settings apply."""
    if out.exists() and any(out.iterdir()):
        raise FactoryError(f"{out} exists and is not empty; choose a new --out folder")
    if len({d.resolve() for d in run_dirs}) != len(run_dirs):
        raise FactoryError("a run directory is listed twice")
    runs = [RunDir.open(d, finished=True) for d in run_dirs]
    manifests = [r.manifest for r in runs]
    cfg = runs[0].config()
    constitution = runs[0].constitution()

    def records() -> Iterator[Record]:
        for r in runs:
            yield from r.records()

    def card(counts: dict, example: dict | None) -> str:
        return merged_card(out.name, list(zip(run_dirs, manifests)), counts, st.to_dict(), example)

    st = StageStats()
    out.mkdir(parents=True, exist_ok=True)
    cleaner = Cleaner(cfg.stages.export.clean, cfg.path)
    decisions = {rid: d for run in run_dirs for rid, d in ReviewStore.read_all(run).items()}  # reviewers' too
    counts = export(records, out, cfg.stages.export, constitution, runs[0].generator, st, card,
                    cleaner=cleaner, review=Review(decisions))
    write_json(out / "manifest.json", {"status": "merged", "finished": now(), "datasets": counts,
                                       "runs": [{"run_dir": str(d.resolve()), "constitution": m["constitution"]["label"],
                                                 "constitution_sha256": m["constitution"]["sha256"],
                                                 "models": m["models"]} for d, m in zip(run_dirs, manifests)]})
    write_json(out / "stats.json", {"datasets": counts, "stages": {"merge": st.to_dict()}})
    return counts, st.to_dict()
