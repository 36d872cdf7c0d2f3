"""`export`: SFT and preference datasets (TRL formats) as Parquet, plus a dataset card whose YAML
header lists the configs, so `datasets.load_dataset(RUN_DIR, "sft")` works offline."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from factory.config import ExportConfig
from factory.constitution import Constitution
from factory.engine.stats import StageStats
from factory.export.clean import Cleaner, sft_target
from factory.export.rows import labelled_rows
from factory.judging.quality import JudgeReport
from factory.records import Record, normalise
from factory.review.decisions import Review

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
# How a pair was judged; null where no judge ran (the revision is then assumed better).
_JUDGED = [
    ("score_chosen", pa.float64()),
    ("score_rejected", pa.float64()),
    ("p_chosen", pa.float64()),
    ("margin", pa.float64()),
    ("position_consistent", pa.bool_()),
    ("judge_model", pa.string()),
    ("judge_principle_ids", pa.list_(pa.string())),
]
# Fact-check scores of the text trained on (prefs: the chosen one); null where nothing was checked.
_FACTS = [("fact_precision", pa.float64()), ("fact_f1", pa.float64())]
SCHEMAS = {
    "sft": pa.schema([("messages", _TURNS), *_PROVENANCE, *_FACTS]),
    "prefs": pa.schema([("prompt", _TURNS), ("chosen", _TURNS), ("rejected", _TURNS), *_JUDGED, *_PROVENANCE,
                        *_FACTS]),
    "kto": pa.schema([("prompt", _TURNS), ("completion", _TURNS), ("label", pa.bool_()), *_PROVENANCE]),
    "reward": pa.schema([("chosen", _TURNS), ("rejected", _TURNS), ("margin", pa.float64()), *_PROVENANCE]),
}
SPLITS = ("train", "test")


def split_of(prompt_id: str, test_fraction: float) -> str:
    """Deterministic: the same prompt lands in the same split in every run."""
    return "test" if int(prompt_id[:8], 16) / 0x1_0000_0000 < test_fraction else "train"


class SplitWriter:
    """Streams one config's rows into per-split Parquet files (and JSONL on request), a chunk at a
    time. Splits are named as in the Hugging Face H4 datasets (`train_sft`, `test_prefs`, ...).
    Files are named `SPLIT-<content hash>.parquet`: `datasets` caches a local folder by its relative
    file names and mtimes, so two runs with the same folder name would otherwise load each other's rows."""

    CHUNK = 2000

    def __init__(self, schema: pa.Schema, folder: Path, config: str, jsonl: bool = False):
        self.schema, self.folder, self.config, self.jsonl = schema, folder, config, jsonl
        self.buffers: dict[str, list[dict]] = {s: [] for s in SPLITS}
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.counts = {self.name(s): 0 for s in SPLITS}

    def name(self, split: str) -> str:
        return f"{split}_{self.config}"

    def add(self, split: str, row: dict) -> None:
        self.counts[self.name(split)] += 1
        self.buffers[split].append(row)
        if len(self.buffers[split]) >= self.CHUNK:
            self._flush(split)

    def _flush(self, split: str) -> None:
        if split not in self.writers:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.writers[split] = pq.ParquetWriter(str(self.folder / f"{split}.parquet.tmp"), self.schema)
        self.writers[split].write_table(pa.Table.from_pylist(self.buffers[split], schema=self.schema))
        if self.jsonl:
            with (self.folder / f"{split}.jsonl.tmp").open("a") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in self.buffers[split])
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
            stem = f"{self.name(split)}-{digest.hexdigest()[:12]}"
            tmp.rename(self.folder / f"{stem}.parquet")
            if self.jsonl:
                (self.folder / f"{split}.jsonl.tmp").rename(self.folder / f"{stem}.jsonl")
            files.append({"split": self.name(split), "path": f"{self.folder.name}/{stem}.parquet"})
        return files


def size_category(n: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < bound:
            return label
    return "n>1M"


def _provenance(rec: Record, principle_ids: list[str], constitution: Constitution, generator: str) -> dict:
    """Where a row came from. The record's own constitution and answer model win over the run's, so
    merged runs keep each row's true origin."""
    label, _, digest = (rec.constitution or "").rpartition(":")
    model = next((c.model for c in rec.calls if c.stage == "answer"), generator)
    return {"prompt_id": rec.id, "principle_ids": principle_ids, "constitution": label or constitution.label,
            "constitution_hash": digest or constitution.digest, "generator_model": model}


def _turn(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def rows(rec: Record, constitution: Constitution, generator: str, cfg: ExportConfig,
         st: StageStats) -> Iterator[tuple[str, dict]]:
    """(config, row) for one record: those below, or the idk and factcheck stages' (label_rows.py)."""
    return labelled_rows(rec, _rows(rec, constitution, generator, cfg, st), constitution, generator, cfg, st)


def _rows(rec: Record, constitution: Constitution, generator: str, cfg: ExportConfig,
          st: StageStats) -> Iterator[tuple[str, dict]]:
    """(config, row) for one record. Unjudged: one SFT row (the first candidate's final text) and one
    pair per candidate whose revision changed it (revision over first answer). Judged: the SFT row
    is the top-ranked option, and the pairs are the judge's, filtered by margin and consistency."""
    if rec.judgement is None:
        for cand in rec.candidates:
            prov = _provenance(rec, [r.principle_id for r in cand.rounds], constitution, generator)
            if cand.index == rec.candidates[0].index:
                yield "sft", {"messages": [{"role": "user", "content": rec.prompt}, *_turn(cand.final)], **prov}
            if normalise(cand.final) == normalise(cand.answer):
                st.drop("prefs:revision_unchanged")
                continue
            yield from pair_rows(rec.prompt, cand.final, cand.answer, prov, {}, cfg, set())
        return
    yield from _judged_rows(rec, constitution, generator, cfg, st)


def _judged_rows(rec: Record, constitution: Constitution, generator: str, cfg: ExportConfig,
                 st: StageStats) -> Iterator[tuple[str, dict]]:
    j = rec.judgement
    assert j is not None
    user = [{"role": "user", "content": rec.prompt}]
    rounds = {c.index: [r.principle_id for r in c.rounds] for c in rec.candidates}
    best = max(range(len(j.options)), key=lambda i: (j.scores[i], -i)) if j.scores else 0
    opt = j.options[best]
    yield "sft", {"messages": [*user, *_turn(opt.text)],
                  **_provenance(rec, rounds[opt.candidate] if opt.kind == "final" else [], constitution, generator)}
    if not j.pairs:
        reason = "single_option" if len(j.options) < 2 else "unjudged" if not j.scores else "tie"
        st.drop(f"prefs:{reason}")
    labelled: set[str] = set()
    for pair in j.pairs:
        margin = round(2 * pair.p_chosen - 1, 6)
        if margin < cfg.min_margin:
            st.drop("prefs:below_min_margin")
            continue
        if cfg.consistent_only and pair.consistent is False:
            st.drop("prefs:position_inconsistent")
            continue
        chosen, rejected = j.options[pair.chosen], j.options[pair.rejected]
        prov = _provenance(rec, sorted(set(rounds[chosen.candidate] + rounds[rejected.candidate])), constitution,
                           generator)
        judged = {"score_chosen": pair.score_chosen, "score_rejected": pair.score_rejected, "p_chosen": pair.p_chosen,
                  "margin": margin, "position_consistent": pair.consistent, "judge_model": pair.judge_model,
                  "judge_principle_ids": pair.principle_ids}
        yield from pair_rows(rec.prompt, chosen.text, rejected.text, prov, judged, cfg, labelled)


def pair_rows(prompt: str, chosen: str, rejected: str, prov: dict, judged: dict, cfg: ExportConfig,
              labelled: set[str]) -> Iterator[tuple[str, dict]]:
    """One preference pair as a `prefs` row, plus its `reward` row and its `kto` rows (each text of a
    record labelled once: `labelled` remembers them) where configured."""
    user = [{"role": "user", "content": prompt}]
    yield "prefs", {"prompt": user, "chosen": _turn(chosen), "rejected": _turn(rejected), **judged, **prov}
    if cfg.reward:
        yield "reward", {"chosen": [*user, *_turn(chosen)], "rejected": [*user, *_turn(rejected)],
                         "margin": judged.get("margin"), **prov}
    if cfg.kto:
        for text, label in ((chosen, True), (rejected, False)):
            if text not in labelled:
                labelled.add(text)
                yield "kto", {"prompt": user, "completion": _turn(text), "label": label, **prov}


def export(records: Callable[[], Iterable[Record]], run_dir: Path, cfg: ExportConfig, constitution: Constitution,
           generator: str, st: StageStats, card: Callable[[dict, dict | None], str],
           report: JudgeReport | None = None, cleaner: Cleaner | None = None,
           review: Review | None = None) -> dict[str, dict[str, int]]:
    """Clean, then stream the records (in a deterministic order; `records()` is read twice) into
    Parquet files and README.md, written into a temp folder and then moved in place: a reader never
    sees half a dataset. `cleaner` holds the loaded evaluation sets (default: cfg.clean, none loaded).
    `review`: human decisions to apply (default: those saved in run_dir; factory/review/decisions.py)."""
    review = review if review is not None else Review.load(run_dir)
    st.touch()
    tmp = run_dir / ".export.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    scratch = StageStats()  # the first pass's row counts are not the export's
    drops = (cleaner or Cleaner(cfg.clean, Path)).plan(
        ((rec, sft_target(review.apply(rec.id, rows(rec, constitution, generator, cfg, scratch), scratch)))
         for rec in records() if not review.rejected(rec.id)), tmp)
    names = ["sft", "prefs"] + ["kto"] * cfg.kto + ["reward"] * cfg.reward
    writers = {name: SplitWriter(review.schema(SCHEMAS[name]), tmp / name, name, cfg.jsonl) for name in names}
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
    (tmp / "README.md").write_text("---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + card(counts, example))
    for name in SCHEMAS:  # every config, so one left by an earlier export with other settings goes too
        shutil.rmtree(run_dir / name, ignore_errors=True)
        if (tmp / name).exists():
            (tmp / name).rename(run_dir / name)
    for name in ("README.md", "dedup.jsonl", "decontam.jsonl"):
        (tmp / name).replace(run_dir / name)
    tmp.rmdir()
    st.records_out = sum(counts["sft"].values())
    st.touch()
    return counts
