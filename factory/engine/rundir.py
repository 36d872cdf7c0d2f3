"""The run directory: created only once every input has been validated, and opened again (`RunDir`)
by resume, export, merge, report and review."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from factory.config import ROOT, PipelineConfig
from factory.constitution import Constitution, load_constitution
from factory.engine.state import RunState
from factory.errors import FactoryError, InputError
from factory.records import Record

FINISHED = ("complete", "complete_with_failures")  # manifest statuses of a run whose datasets are written
PACKAGES = ("constitution-factory", "torch", "transformers", "datasets", "trl", "openai", "anthropic", "pydantic")


def create_run_dir(out: str | Path | None, outputs: Path = ROOT / "outputs") -> Path:
    if out is not None:
        path = Path(out)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise FactoryError(f"{path}: run directory already exists and is not empty; choose another --out")
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = outputs / stamp
        n = 1
        while path.exists():
            n += 1
            path = outputs / f"{stamp}-{n}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, obj: object) -> None:
    """Atomic: a reader never sees half a file, a crash never leaves one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if sha.returncode != 0:
        return None
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def command_line() -> list[str]:
    return [Path(sys.argv[0]).name, *sys.argv[1:]]


@dataclass
class RunDir:
    """A run directory opened again: its manifest, and the config, constitution and records it was
    made with. The one place that reads a run's manifest back."""

    path: Path
    manifest: dict

    @classmethod
    def open(cls, path: Path, *, finished: bool = False, hint: str = "") -> RunDir:
        """`finished`: refuse a run whose datasets are not written yet. `hint`: what to say after a
        missing manifest."""
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise FactoryError(f"{path}: not a run directory (no manifest.json){hint}")
        try:
            run = cls(path, json.loads(manifest_path.read_text()))
        except ValueError as e:
            raise InputError(manifest_path, f"not a manifest this version can read ({type(e).__name__}: {e})"[:300],
                             line=getattr(e, "lineno", None)) from None
        if finished and not run.finished:
            raise FactoryError(f"{path}: the run is {run.status!r}; finish it first (factory run --resume {path})")
        return run

    @property
    def status(self) -> str | None:
        return self.manifest.get("status")

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def generator(self) -> str:
        """The answer stage's model spec."""
        return self.manifest["stage_models"]["answer"]

    def config(self) -> PipelineConfig:
        """The config the run used, its relative paths resolved against the folder it was loaded from."""
        try:
            cfg = PipelineConfig.model_validate(self.manifest["config"])
        except (ValueError, KeyError, TypeError) as e:  # pydantic and a missing or odd field alike
            raise InputError(self.path / "manifest.json",
                             f"not a manifest this version can resume ({type(e).__name__}: {e})"[:300]) from None
        return cfg.based_at(Path(self.manifest.get("config_dir", ".")))

    def constitution(self) -> Constitution:
        """The constitution the run used, from the file its manifest names."""
        entry = self.manifest["constitution"]
        path = Path(entry["path"])
        if not path.is_file():
            raise FactoryError(f"{path}: the constitution of {self.path} is gone; restore it (sha256 "
                               f"{entry['sha256'][:12]}) and run the command again")
        return load_constitution(path)

    def lines(self, name: str) -> Iterator[dict]:
        """The objects of a JSON-lines file of the run (failed.jsonl, dedup.jsonl, decontam.jsonl, ...),
        blank lines skipped; none if the file does not exist."""
        path = self.path / name
        if path.is_file():
            with path.open() as f:
                yield from (json.loads(line) for line in f if line.strip())

    def lineage(self, *, kept: bool = False) -> Iterator[Record]:
        """The run's done and dropped records (`kept`: done ones only), every call and round, in id order,
        streamed: from state.sqlite, their one copy, or from the records.jsonl of a run made by an older
        version (or written by hand)."""
        return (Record.model_validate_json(line) for line in self.lineage_json(kept=kept))

    def lineage_json(self, *, kept: bool = False) -> Iterator[str]:
        """The same records as JSON strings (for readers that want dicts or want to skip validation)."""
        jsonl = self.path / "records.jsonl"
        if jsonl.is_file():
            with jsonl.open() as f:
                for line in f:
                    if line.strip() and not (kept and json.loads(line).get("dropped") is not None):
                        yield line
            return
        if not (self.path / "state.sqlite").is_file():
            return
        state = RunState(self.path, readonly=True)
        try:
            where = "WHERE status='done'" if kept else "WHERE status IN ('done', 'dropped')"
            yield from (data for _, _, _, data in state.rows(where))
        finally:
            state.close()

    @property
    def has_lineage(self) -> bool:
        """Whether the run's records are final: it has finished or stopped at its budget (or an older
        version left a records.jsonl). A run killed mid-way has only some of them."""
        final = self.finished or self.status == "stopped_at_budget"
        return (self.path / "records.jsonl").is_file() or (final and (self.path / "state.sqlite").is_file())

    def records(self) -> Iterator[Record]:
        """The records export reads: done ones, not dropped."""
        return self.lineage(kept=True)

    def save_manifest(self) -> None:
        write_json(self.path / "manifest.json", self.manifest)
