"""Splits: with two prompts or more, neither train nor test is left empty, every config follows the
same prompts, and `factory eval` on the run finds the same test prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from test_clean import HARMLESS, rec

from factory.commands.evaluate import held_out
from factory.config import ExportConfig
from factory.engine.stats import StageStats
from factory.export.writer import _position, export, split_plan
from factory.records import prompt_id


def prompts_where(test: bool, n: int, fraction: float) -> list[str]:
    """n prompts that split_of puts all in test (or all in train) at this fraction."""
    found = (f"Question {i} about a topic?" for i in range(10_000))
    return [p for p in found if (_position(prompt_id(p)) < fraction) == test][:n]


def split_rows(run: Path, config: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in (run / config).glob("*.parquet"):
        out.setdefault(f.name.split("_")[0], set()).update(r["prompt_id"] for r in pq.read_table(f).to_pylist())
    return out


def test_split_plan() -> None:
    assert split_plan(["a" * 8, "b" * 8], 0.0) == {} and split_plan(["0" * 8], 0.5) == {}
    low, high = "00000001", "fffffff0"
    assert split_plan([low, high], 0.5) == {}
    assert split_plan([low, "00000002"], 0.5) == {"00000002": "train"}  # both test: the nearer the boundary moves
    assert split_plan(["f0000000", high], 0.1) == {"f0000000": "test"}  # both train


def test_a_small_run_all_hashed_to_test_gets_a_train_split_in_every_config(tmp_path: Path) -> None:
    fraction = 0.2
    prompts = prompts_where(test=True, n=3, fraction=fraction)
    records = [rec(p, f"Short answer {i}.", f"A longer and kinder answer number {i}, with care and detail.")
               for i, p in enumerate(prompts)]
    run = tmp_path / "run"
    run.mkdir()
    export(lambda: iter(records), run, ExportConfig(test_fraction=fraction, kto=True, reward=True), HARMLESS, "m",
           StageStats(), lambda c, e: "card")
    moved = json.loads((run / "splits.json").read_text())["moved"]
    assert list(moved.values()) == ["train"]
    for config in ("sft", "prefs", "kto", "reward"):
        by = split_rows(run, config)
        assert by["train"] == set(moved) and len(by["test"]) == 2, config
    (run / "manifest.json").write_text(json.dumps({"config": {"stages": {"export": {"test_fraction": fraction}}}}))
    (run / "records.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in records))
    assert {r.id for r in held_out(run, None)} == {r.id for r in records} - set(moved)


def test_split_writer_writes_row_groups_by_rows_and_by_bytes_and_loses_no_row(tmp_path: Path, monkeypatch) -> None:
    from datasets import load_dataset

    from factory.export.writer import SplitWriter, schemas

    monkeypatch.setattr(SplitWriter, "ROWS", 3)
    monkeypatch.setattr(SplitWriter, "BYTES", 600)
    w = SplitWriter(schemas()["sft"], tmp_path / "sft", "sft", jsonl=True)
    texts = [("long " * 100 if i % 4 == 0 else f"short {i}") for i in range(10)]  # a long row fills BYTES alone
    for i, t in enumerate(texts):
        w.add("train", {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": t}],
                        "prompt_id": f"{i:032x}"})
    [entry] = w.close()
    path = tmp_path / entry["path"]
    groups = [pq.ParquetFile(path).metadata.row_group(g).num_rows for g in range(pq.ParquetFile(path).num_row_groups)]
    assert sum(groups) == 10 and max(groups) <= 3 and groups != [3, 3, 3, 1]  # some group ended on bytes
    loaded = load_dataset("parquet", data_files=str(path), split="train")
    assert [r["messages"][1]["content"] for r in loaded] == texts
    assert len(path.with_suffix(".jsonl").read_text().splitlines()) == 10 and w.counts == {"train_sft": 10, "test_sft": 0}
