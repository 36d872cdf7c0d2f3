"""`export`: SFT and preference datasets (TRL formats) as Parquet, plus a dataset card whose YAML
header lists the configs, so `datasets.load_dataset(RUN_DIR, "sft")` works offline."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from factory.config import ExportConfig
from factory.constitution import Constitution
from factory.engine.stats import StageStats
from factory.export.rows import rows
from factory.hygiene.clean import Cleaner, sft_target
from factory.hygiene.spill import Spill
from factory.judging.quality import JudgeReport
from factory.records import Record
from factory.review.decisions import Review

if TYPE_CHECKING:
    import pyarrow as pa

NAME = "export"
CONFIGS = ("sft", "prefs", "kto", "reward")


@functools.cache
def schemas() -> dict[str, pa.Schema]:
    """Each config's Arrow schema. Built on first use: pyarrow is imported by the export, not with the
    run, so the run itself holds about 30 MB less RSS (bench/throughput.py).

    Plain Arrow types, which `datasets` reads as List({"role": Value("string"), "content": Value("string")})
    and so on. (Importing `datasets` here would add about 80 MB to every run's memory.)"""
    import pyarrow as pa

    turns = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    provenance = [("prompt_id", pa.string()), ("principle_ids", pa.list_(pa.string())), ("constitution", pa.string()),
                  ("constitution_hash", pa.string()), ("generator_model", pa.string())]
    # How a pair was judged; null where no judge ran (the revision is then assumed better).
    judged = [("score_chosen", pa.float64()), ("score_rejected", pa.float64()), ("p_chosen", pa.float64()),
              ("margin", pa.float64()), ("position_consistent", pa.bool_()), ("judge_model", pa.string()),
              ("judge_principle_ids", pa.list_(pa.string()))]
    # Fact-check scores of the text trained on (prefs: the chosen one); null where nothing was checked.
    facts = [("fact_precision", pa.float64()), ("fact_f1", pa.float64())]
    return {
        "sft": pa.schema([("messages", turns), *provenance, *facts]),
        "prefs": pa.schema([("prompt", turns), ("chosen", turns), ("rejected", turns), *judged, *provenance, *facts]),
        "kto": pa.schema([("prompt", turns), ("completion", turns), ("label", pa.bool_()), *provenance]),
        "reward": pa.schema([("chosen", turns), ("rejected", turns), ("margin", pa.float64()), *provenance]),
    }


SPLITS = ("train", "test")


def _position(prompt_id: str) -> float:
    return int(prompt_id[:8], 16) / 0x1_0000_0000


def split_of(prompt_id: str, test_fraction: float, moved: dict[str, str] | None = None) -> str:
    """Deterministic: the same prompt lands in the same split in every run (`moved`: split_plan's)."""
    if moved and prompt_id in moved:
        return moved[prompt_id]
    return "test" if _position(prompt_id) < test_fraction else "train"


def split_plan(prompt_ids: Iterable[str], test_fraction: float) -> dict[str, str]:
    """The prompts that leave the split split_of gives them: with two prompts or more and a fraction
    between 0 and 1, neither split is left empty (a small run could hash every prompt to one side),
    so the prompt nearest the boundary moves over. All of a prompt's rows move with it, in every
    config. Written to SPLITS_FILE, which `factory eval` reads to find the test prompts."""
    if not 0 < test_fraction < 1:
        return {}
    lowest = highest = None  # (position, id): one pass, nothing held per prompt
    sides: set[str] = set()
    for i in prompt_ids:
        key = (_position(i), i)
        lowest, highest = min(lowest or key, key), max(highest or key, key)
        sides.add(split_of(i, test_fraction))
    if lowest is None or lowest == highest:
        return {}
    return {highest[1]: "train"} if sides == {"test"} else {lowest[1]: "test"} if sides == {"train"} else {}


def arrow_table(lines: list[str], schema: pa.Schema) -> pa.Table:
    """Rows, as JSON lines, to a table of `schema` through Arrow's JSON reader. Not `Table.from_pylist`:
    `pa.array` on a Python list imports pandas to check for pandas objects, about 40 MB of RSS that a
    run keeps to its end (bench/throughput.py). As with from_pylist, a key outside the schema is
    ignored and a missing one is null."""
    import pyarrow as pa
    import pyarrow.json as pj

    data = "".join(lines).encode()
    return pj.read_json(pa.BufferReader(data), read_options=pj.ReadOptions(use_threads=False, block_size=len(data) + 1),
                        parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"))


SPLITS_FILE = "splits.json"
# zstd at 9: 44% smaller than pyarrow's default (snappy) on bench/storage.py's datasets; written once per export
PARQUET_ZSTD_LEVEL = 9


class SplitWriter:
    """Streams one config's rows into per-split Parquet files (and JSONL on request), a row group at
    a time. Splits are named as in the Hugging Face H4 datasets (`train_sft`, `test_prefs`, ...).
    Files are named `SPLIT-<content hash>.parquet`: `datasets` caches a local folder by its relative
    file names and mtimes, so two runs with the same folder name would otherwise load each other's rows.

    Memory stays the same at any run size: a row is held as its JSON line until its row group is
    written (ROWS rows or BYTES of JSON, whichever comes first; 2,000 rows as dicts held 30 MB more
    at bench/review_scale.py's peak), and a split's file ends after GROUPS row groups, because a
    Parquet writer keeps every row group's metadata (about 18 KB on the prefs schema) until it
    closes (one file per split at 10^6 records: 26 MB more by the end of an RSS trace, still rising).
    A split of several files is listed in the card as a list of paths,
    `SPLIT-<hash>-00000-of-00003.parquet` and so on (the hash: of all its parts)."""

    ROWS = 1000  # as `datasets` writes Parquet row groups
    BYTES = 2 << 20
    GROUPS = 100  # row groups per file: up to 100,000 rows

    def __init__(self, schema: pa.Schema, folder: Path, config: str, jsonl: bool = False):
        self.schema, self.folder, self.config, self.jsonl = schema, folder, config, jsonl
        self.buffers: dict[str, list[str]] = {s: [] for s in SPLITS}
        self.sizes = dict.fromkeys(SPLITS, 0)
        self.writers: dict = {}  # split -> its open pyarrow ParquetWriter
        self.groups = dict.fromkeys(SPLITS, 0)  # row groups in the split's open file
        self.parts: dict[str, list[Path]] = {s: [] for s in SPLITS}  # the split's files so far
        self.counts = {self.name(s): 0 for s in SPLITS}

    def name(self, split: str) -> str:
        return f"{split}_{self.config}"

    def add(self, split: str, row: dict) -> None:
        self.counts[self.name(split)] += 1
        line = json.dumps(row, ensure_ascii=False) + "\n"
        self.buffers[split].append(line)
        self.sizes[split] += len(line)
        if len(self.buffers[split]) >= self.ROWS or self.sizes[split] >= self.BYTES:
            self._flush(split)

    def _flush(self, split: str) -> None:
        import pyarrow.parquet as pq

        if split not in self.writers:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.parts[split].append(self.folder / f"{split}.{len(self.parts[split]):05d}.parquet.tmp")
            self.writers[split] = pq.ParquetWriter(str(self.parts[split][-1]), self.schema, compression="zstd",
                                                   compression_level=PARQUET_ZSTD_LEVEL)
        lines, self.buffers[split], self.sizes[split] = self.buffers[split], [], 0
        self.writers[split].write_table(arrow_table(lines, self.schema))
        self.groups[split] += 1
        if self.groups[split] >= self.GROUPS:
            self.writers.pop(split).close()
            self.groups[split] = 0
        if self.jsonl:
            with (self.folder / f"{split}.jsonl.tmp").open("a") as f:
                f.writelines(lines)

    def close(self) -> list[dict]:
        """The data_files entries of the card, one per non-empty split."""
        files = []
        for split in SPLITS:
            if self.buffers[split]:
                self._flush(split)
            if split in self.writers:
                self.writers.pop(split).close()
            parts = self.parts[split]
            if not parts:
                continue
            digest = hashlib.sha256()
            for part in parts:
                with part.open("rb") as f:
                    while chunk := f.read(1 << 20):
                        digest.update(chunk)
            stem = f"{self.name(split)}-{digest.hexdigest()[:12]}"
            names = [f"{stem}.parquet"] if len(parts) == 1 else \
                [f"{stem}-{i:05d}-of-{len(parts):05d}.parquet" for i in range(len(parts))]
            for part, name in zip(parts, names, strict=True):
                part.rename(self.folder / name)
            if self.jsonl:
                (self.folder / f"{split}.jsonl.tmp").rename(self.folder / f"{stem}.jsonl")
            paths = [f"{self.folder.name}/{name}" for name in names]
            files.append({"split": self.name(split), "path": paths[0] if len(paths) == 1 else paths})
        return files


def size_category(n: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < bound:
            return label
    return "n>1M"


def export(records: Callable[[], Iterable[Record]], run_dir: Path, cfg: ExportConfig, constitution: Constitution,
           generator: str, st: StageStats, card: Callable[[dict, dict | None], str],
           report: JudgeReport | None = None, cleaner: Cleaner | None = None,
           review: Review | None = None) -> dict[str, dict[str, int]]:
    """Clean, then stream the records (in a deterministic order; `records()` is read twice) into
    Parquet files and README.md, written into a temp folder and then moved in place: a reader never
    sees half a dataset. `cleaner` holds the loaded evaluation sets (default: cfg.clean, none loaded).
    `review`: human decisions to apply (default: those saved in run_dir; factory/review/decisions.py)."""
    import pyarrow as pa

    # Arrow's default allocator (mimalloc) keeps freed memory: bench/review_scale.py's export peaked at
    # 163 MB at 10^4 records and 193 MB at 10^5 with it, 145 and 162 MB with ARROW_DEFAULT_MEMORY_POOL=system.
    pa.set_memory_pool(pa.system_memory_pool())
    review = review if review is not None else Review.load(run_dir)
    st.touch()
    tmp = run_dir / ".export.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    scratch = StageStats()  # the first pass's row counts are not the export's
    ids = Spill(tmp)  # of the records planned, in order (on disk)

    def planned() -> Iterator[tuple[Record, str | None]]:
        for rec in records():
            if not review.rejected(rec.id):
                ids.append(rec.id)
                yield rec, sft_target(review.apply(rec.id, rows(rec, constitution, generator, cfg, scratch), scratch))

    drops = (cleaner or Cleaner(cfg.clean, Path)).plan(planned(), tmp)
    moved = split_plan((i for position, i in enumerate(ids) if position not in drops), cfg.test_fraction)
    ids.close()
    (tmp / SPLITS_FILE).write_text(json.dumps({"test_fraction": cfg.test_fraction, "moved": moved}, indent=1) + "\n")
    names = ["sft", "prefs"] + ["kto"] * cfg.kto + ["reward"] * cfg.reward
    writers = {name: SplitWriter(review.schema(schemas()[name]), tmp / name, name, cfg.jsonl) for name in names}
    example = None
    position = -1  # among the records not rejected by a reviewer, as in the plan
    for rec in records():
        st.records_in += 1
        if review.rejected(rec.id):
            st.drop("human_rejected")
            continue
        position += 1
        if position in drops:
            st.drop(drops[position])
            continue
        if report is not None and rec.judgement is not None:
            report.add(rec.judgement)
        for name, row in review.apply(rec.id, rows(rec, constitution, generator, cfg, st), st):
            writers[name].add(split_of(row["prompt_id"], cfg.test_fraction, moved), row)
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
    (tmp / "README.md").write_text("---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + card(counts, example))
    for name in CONFIGS:  # every config, so one left by an earlier export with other settings goes too
        shutil.rmtree(run_dir / name, ignore_errors=True)
        if (tmp / name).exists():
            (tmp / name).rename(run_dir / name)
    for name in ("README.md", "dedup.jsonl", "decontam.jsonl", SPLITS_FILE):
        (tmp / name).replace(run_dir / name)
    tmp.rmdir()
    st.records_out = sum(counts["sft"].values())
    st.touch()
    return counts
