"""`export`: SFT and preference datasets (TRL formats) as Parquet, plus a dataset card whose YAML
header lists the configs, so `datasets.load_dataset(RUN_DIR, "sft")` works offline."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from factory.config import ExportConfig
from factory.constitution import Constitution
from factory.records import Record, normalise
from factory.stats import StageStats

NAME = "export"
# Plain Arrow types, which `datasets` reads as List({"role": Value("string"), "content": Value("string")})
# and so on. (Importing `datasets` here would add about 80 MB to every run's memory.)
_TURNS = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
_PROVENANCE = [
    ("prompt_id", pa.string()),
    ("principle_ids", pa.list_(pa.string())),
    ("constitution", pa.string()),
    ("constitution_hash", pa.string()),
    ("generator_model", pa.string()),
]
SCHEMAS = {
    "sft": pa.schema([("messages", _TURNS), *_PROVENANCE]),
    "prefs": pa.schema([("prompt", _TURNS), ("chosen", _TURNS), ("rejected", _TURNS), *_PROVENANCE]),
}
SPLITS = ("train", "test")


def split_of(prompt_id: str, test_fraction: float) -> str:
    """Deterministic: the same prompt lands in the same split in every run."""
    return "test" if int(prompt_id[:8], 16) / 0x1_0000_0000 < test_fraction else "train"


class SplitWriter:
    """Streams one config's rows into per-split Parquet files, a chunk at a time. Files are named
    `SPLIT-<content hash>.parquet`: `datasets` caches a local folder by its relative file names and
    mtimes, so two runs with the same folder name would otherwise load each other's rows."""

    CHUNK = 2000

    def __init__(self, schema: pa.Schema, folder: Path):
        self.schema, self.folder = schema, folder
        self.buffers: dict[str, list[dict]] = {s: [] for s in SPLITS}
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.counts = dict.fromkeys(SPLITS, 0)

    def add(self, split: str, row: dict) -> None:
        self.counts[split] += 1
        self.buffers[split].append(row)
        if len(self.buffers[split]) >= self.CHUNK:
            self._flush(split)

    def _flush(self, split: str) -> None:
        if split not in self.writers:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.writers[split] = pq.ParquetWriter(str(self.folder / f"{split}.parquet.tmp"), self.schema)
        self.writers[split].write_table(pa.Table.from_pylist(self.buffers[split], schema=self.schema))
        self.buffers[split] = []

    def close(self) -> list[dict]:
        """The data_files entries of the card, one per non-empty split."""
        files = []
        for split in SPLITS:
            if self.buffers[split]:
                self._flush(split)
            if split not in self.writers:
                continue
            self.writers[split].close()
            tmp = self.folder / f"{split}.parquet.tmp"
            digest = hashlib.sha256()
            with tmp.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            name = f"{split}-{digest.hexdigest()[:12]}.parquet"
            tmp.rename(self.folder / name)
            files.append({"split": split, "path": f"{self.folder.name}/{name}"})
        return files


def size_category(n: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < bound:
            return label
    return "n>1M"


def rows(rec: Record, constitution: Constitution, generator: str, st: StageStats) -> Iterator[tuple[str, dict]]:
    """(config, row) for one record: one SFT row (its first candidate's final text); one preference
    pair per candidate whose final text differs from its first answer (revision over initial answer)."""
    user = {"role": "user", "content": rec.prompt}
    for cand in rec.candidates:
        prov = {
            "prompt_id": rec.id,
            "principle_ids": [r.principle_id for r in cand.rounds],
            "constitution": constitution.label,
            "constitution_hash": constitution.digest,
            "generator_model": generator,
        }
        if cand.index == rec.candidates[0].index:
            yield "sft", {"messages": [user, {"role": "assistant", "content": cand.final}], **prov}
        if normalise(cand.final) == normalise(cand.answer):
            st.drop("prefs:revision_unchanged")
            continue
        yield "prefs", {
            "prompt": [user],
            "chosen": [{"role": "assistant", "content": cand.final}],
            "rejected": [{"role": "assistant", "content": cand.answer}],
            **prov,
        }


def export(records: Iterable[Record], run_dir: Path, cfg: ExportConfig, constitution: Constitution,
           generator: str, st: StageStats, card: Callable[[dict, dict | None], str]) -> dict[str, dict[str, int]]:
    """Stream the records (in a deterministic order) into Parquet files and README.md, written into a
    temp folder and then moved in place: a reader never sees half a dataset."""
    st.touch()
    tmp = run_dir / ".export.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    writers = {name: SplitWriter(schema, tmp / name) for name, schema in SCHEMAS.items()}
    example = None
    for rec in records:
        st.records_in += 1
        for name, row in rows(rec, constitution, generator, st):
            writers[name].add(split_of(row["prompt_id"], cfg.test_fraction), row)
            if name == "prefs" and example is None:
                example = row
    configs = []
    for name, w in writers.items():
        files = w.close()
        if files:
            configs.append({"config_name": name, "data_files": files})
    counts = {name: w.counts for name, w in writers.items()}
    header = {
        "configs": configs,
        "license": cfg.license,
        "task_categories": ["text-generation"],
        "tags": ["constitutional-ai", "synthetic", "rlaif", "constitution-factory"],
        "size_categories": [size_category(sum(counts["sft"].values()))],
    }
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "README.md").write_text("---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + card(counts, example))
    for name in SCHEMAS:
        shutil.rmtree(run_dir / name, ignore_errors=True)
        if (tmp / name).exists():
            (tmp / name).rename(run_dir / name)
    (tmp / "README.md").replace(run_dir / "README.md")
    tmp.rmdir()
    st.records_out = sum(counts["sft"].values())
    st.touch()
    return counts
