"""Run-level figures for the report, from the run directory's own files: manifest.json, stats.json,
failed.jsonl, dedup.jsonl, decontam.jsonl and calls.sqlite (opened read-only). The constitution's
texts come from the file the manifest names, and only when its content hash still matches."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from factory.constitution import load_constitution
from factory.engine.rundir import RunDir
from factory.errors import FactoryError

TIME_BINS = 60


@dataclass
class Timeline:
    """Calls of this run over time, in TIME_BINS bins (fewer for short runs)."""

    unit: str  # s, min or h: the unit of `x`
    x: list[float]  # each bin's start, since the first call
    calls_per_min: list[float]
    failed_per_min: list[float]
    tokens_per_s: list[float]
    cost_cum: list[float]
    calls_cum: list[int]
    latency: list[float]  # mean seconds per call finished in the bin
    calls: int
    failed: int
    reused: int  # calls copied in from a shared cache (made before this run started)
    cost: float


@dataclass
class RunFigures:
    dir: Path
    manifest: dict
    stats: dict | None
    config_yaml: str
    principles: list[dict]  # id, hash, and the texts (critique, revision, judge) where the file still matches
    constitution_note: str
    failed_by_stage: Counter[str] = field(default_factory=Counter)
    dedup: Counter[str] = field(default_factory=Counter)  # "exact prompt" -> records dropped
    decontaminated: int = 0
    timeline: Timeline | None = None


def _timestamp(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


def read_figures(run_dir: Path) -> RunFigures:
    run = RunDir.open(run_dir, hint=". Give the folder `factory run` printed as its last line, "
                                    "e.g. outputs/20261121-093000")
    manifest = run.manifest
    stats_path = run_dir / "stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else None
    principles, note = _principles(manifest.get("constitution", {}))
    view = RunFigures(
        run_dir, manifest, stats, yaml.safe_dump(manifest.get("config", {}), sort_keys=False), principles, note
    )
    for row in run.lines("failed.jsonl"):
        view.failed_by_stage[row.get("stage", "?")] += 1
    for cluster in run.lines("dedup.jsonl"):
        view.dedup[f"{cluster.get('by')} {cluster.get('field')}"] += len(cluster.get("dropped", []))
    view.decontaminated = sum(1 for _ in run.lines("decontam.jsonl"))
    if (run_dir / "calls.sqlite").is_file():
        view.timeline = read_timeline(
            run_dir / "calls.sqlite", _timestamp(manifest.get("started")), _timestamp(manifest.get("finished"))
        )
    return view


def _principles(c: dict) -> tuple[list[dict], str]:
    hashes: dict = c.get("principles", {})
    rows = [{"id": pid, "hash": h} for pid, h in hashes.items()]
    path = Path(c.get("path", ""))
    try:
        loaded = load_constitution(path) if path.is_file() else None
    except FactoryError:
        loaded = None
    if loaded is None or loaded.digest != c.get("sha256"):
        return rows, (
            f"{path} is missing or has changed since this run, so only the principles' ids and hashes are shown."
        )
    texts = {p.id: p for p in loaded.principles}
    for row in rows:
        p = texts[row["id"]]
        row |= {"critique": p.critique, "revision": p.revision, "judge": p.judge}
    return rows, loaded.description.strip()


def read_timeline(path: Path, started: float | None, finished: float | None) -> Timeline | None:
    """Calls per minute, failed attempts, tokens per second, cumulative cost and mean latency over
    time. Calls logged outside [started, finished] came from a shared cache and are only counted."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        lo, hi = (started or 0) - 1, (finished or float("inf")) + 1
        t0, t1, n = db.execute(
            "SELECT MIN(created), MAX(created), COUNT(*) FROM calls WHERE created BETWEEN ? AND ?", (lo, hi)
        ).fetchone()
        reused = db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] - n
        e0, e1 = db.execute(
            "SELECT MIN(created), MAX(created) FROM errors WHERE created BETWEEN ? AND ?", (lo, hi)
        ).fetchone()
        starts, ends = [t for t in (t0, e0) if t is not None], [t for t in (t1, e1) if t is not None]
        if not starts:
            return None
        t0, t1 = min(starts), max(ends)
        bins = max(1, min(TIME_BINS, n // 5))
        width = max((t1 - t0) / bins, 1e-3)
        per_bin = [[0, 0, 0.0, 0.0, 0] for _ in range(bins)]  # calls, tokens, cost, latency sum, failed attempts
        binned = (
            "SELECT MIN(?, CAST((created - ?) / ? AS INTEGER)) AS b, COUNT(*), {} FROM {} "
            "WHERE created BETWEEN ? AND ? GROUP BY b"
        )
        args = (bins - 1, t0, width, lo, hi)
        for b, count, tokens, cost, latency in db.execute(
            binned.format("SUM(prompt_tokens + completion_tokens), SUM(cost), SUM(latency)", "calls"), args
        ):
            per_bin[b][:4] = [count, tokens, cost, latency]
        for b, count, cost in db.execute(binned.format("SUM(cost)", "errors"), args):
            per_bin[b][2] += cost
            per_bin[b][4] = count
        failed = sum(b[4] for b in per_bin)
    finally:
        db.close()
    span = t1 - t0
    unit, scale = ("h", 3600) if span >= 7200 else ("min", 60) if span >= 600 else ("s", 1)
    cum, cost_cum, calls_cum = 0.0, [], []
    for b in per_bin:
        cum += b[2]
        cost_cum.append(round(cum, 6))
        calls_cum.append(b[0] + (calls_cum[-1] if calls_cum else 0))
    return Timeline(
        unit=unit,
        x=[round(i * width / scale, 4) for i in range(bins)],
        calls_per_min=[round(b[0] * 60 / width, 3) for b in per_bin],
        failed_per_min=[round(b[4] * 60 / width, 3) for b in per_bin],
        tokens_per_s=[round(b[1] / width, 3) for b in per_bin],
        cost_cum=cost_cum,
        calls_cum=calls_cum,
        latency=[round(b[3] / b[0], 4) if b[0] else 0.0 for b in per_bin],
        calls=n,
        failed=failed,
        reused=reused,
        cost=round(cum, 6),
    )
