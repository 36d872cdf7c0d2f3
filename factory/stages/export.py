"""`export`: SFT and preference datasets (TRL formats) as Parquet, plus a dataset card whose YAML
header lists the configs, so `datasets.load_dataset(RUN_DIR, "sft")` works offline."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import yaml
from datasets import Dataset, Features, List, Value

from factory.config import ExportConfig
from factory.constitution import Constitution
from factory.records import Record, normalise
from factory.stats import StageStats

NAME = "export"
_TURN = {"role": Value("string"), "content": Value("string")}
_PROVENANCE = {
    "prompt_id": Value("string"),
    "principle_ids": List(Value("string")),
    "constitution": Value("string"),
    "constitution_hash": Value("string"),
    "generator_model": Value("string"),
}
FEATURES = {
    "sft": Features({"messages": List(_TURN), **_PROVENANCE}),
    "prefs": Features({"prompt": List(_TURN), "chosen": List(_TURN), "rejected": List(_TURN), **_PROVENANCE}),
}
SPLITS = ("train", "test")


def split_of(prompt_id: str, test_fraction: float) -> str:
    """Deterministic: the same prompt lands in the same split in every run."""
    return "test" if int(prompt_id[:8], 16) / 0x1_0000_0000 < test_fraction else "train"


def write_parquet(table: list[dict], features: Features, folder: Path, split: str) -> str:
    """Write `folder/SPLIT-<content hash>.parquet`. `datasets` caches a local folder by its relative
    file names and mtimes, so two runs with the same folder name would otherwise share a cache
    entry and load each other's rows; a content-hashed name makes a cache hit mean identical data."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{split}.parquet.tmp"
    Dataset.from_list(table, features=features).to_parquet(str(tmp))
    name = f"{split}-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:12]}.parquet"
    tmp.rename(folder / name)
    return f"{folder.name}/{name}"


def size_category(n: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < bound:
            return label
    return "n>1M"


def rows(records: list[Record], constitution: Constitution, generator: str, st: StageStats) -> dict[str, list[dict]]:
    """One SFT row per prompt (its first candidate's final text); one preference pair per candidate
    whose final text differs from its first answer (revision chosen over initial answer)."""
    out: dict[str, list[dict]] = {"sft": [], "prefs": []}
    for rec in sorted(records, key=lambda r: r.id):
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
                out["sft"].append({"messages": [user, {"role": "assistant", "content": cand.final}], **prov})
            if normalise(cand.final) == normalise(cand.answer):
                st.drop("prefs:revision_unchanged")
                continue
            out["prefs"].append({
                "prompt": [user],
                "chosen": [{"role": "assistant", "content": cand.final}],
                "rejected": [{"role": "assistant", "content": cand.answer}],
                **prov,
            })
    return out


def export(records: list[Record], run_dir: Path, cfg: ExportConfig, constitution: Constitution,
           generator: str, st: StageStats, card: Callable[[dict, dict | None], str]) -> dict[str, dict[str, int]]:
    """Write Parquet files and README.md atomically (into a temp folder, then moved in place)."""
    st.touch()
    st.records_in = len(records)
    data = rows(records, constitution, generator, st)
    tmp = run_dir / ".export.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    counts: dict[str, dict[str, int]] = {}
    configs = []
    for name, table in data.items():
        by_split = {s: [r for r in table if split_of(r["prompt_id"], cfg.test_fraction) == s] for s in SPLITS}
        counts[name] = {s: len(v) for s, v in by_split.items()}
        files = []
        for split, split_rows in by_split.items():
            if not split_rows:
                continue
            files.append({"split": split, "path": write_parquet(split_rows, FEATURES[name], tmp / name, split)})
        if files:
            configs.append({"config_name": name, "data_files": files})
    header = {
        "configs": configs,
        "license": cfg.license,
        "task_categories": ["text-generation"],
        "tags": ["constitutional-ai", "synthetic", "rlaif", "constitution-factory"],
        "size_categories": [size_category(len(data["sft"]))],
    }
    example = data["prefs"][0] if data["prefs"] else None
    body = card(counts, example)
    (tmp / "README.md").write_text("---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + body)
    for name in data:
        shutil.rmtree(run_dir / name, ignore_errors=True)
        if (tmp / name).exists():
            (tmp / name).rename(run_dir / name)
    (tmp / "README.md").replace(run_dir / "README.md")
    tmp.rmdir()
    st.records_out = sum(counts["sft"].values())
    st.touch()
    return counts
