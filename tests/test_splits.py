"""Splits: with two prompts or more, neither train nor test is left empty, every config follows the
same prompts, and `factory eval` on the run finds the same test prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
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


def test_split_writer_writes_row_groups_by_rows_and_bytes_and_files_by_groups_and_loses_no_row(
        tmp_path: Path, monkeypatch) -> None:
    from datasets import load_dataset

    from factory.export.card import paths
    from factory.export.writer import SplitWriter, schemas
    from factory.train.data import provenance

    monkeypatch.setattr(SplitWriter, "ROWS", 3)
    monkeypatch.setattr(SplitWriter, "BYTES", 600)
    monkeypatch.setattr(SplitWriter, "GROUPS", 2)
    w = SplitWriter(schemas()["sft"], tmp_path / "sft", "sft", jsonl=True)
    texts = [("long " * 100 if i % 4 == 0 else f"short {i}") for i in range(10)]  # a long row fills BYTES alone
    for i, t in enumerate(texts):
        w.add("train", {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": t}],
                        "prompt_id": f"{i:032x}"})
    [entry] = w.close()
    files = [tmp_path / p for p in paths(entry)]
    groups = [[f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)] for f in map(pq.ParquetFile, files)]
    assert groups == [[1, 3], [1, 3], [1, 1]]  # groups end at 3 rows or at a long row; files at 2 groups
    assert [f.name.split("-", 1)[1][12:] for f in files] == [f"-{i:05d}-of-00003.parquet" for i in range(3)]
    loaded = load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    assert [r["messages"][1]["content"] for r in loaded] == texts  # in order, across the files
    stem = files[0].name.split("-00000")[0]
    assert len((tmp_path / "sft" / f"{stem}.jsonl").read_text().splitlines()) == 10
    assert w.counts == {"train_sft": 10, "test_sft": 0}
    (tmp_path / "README.md").write_text("card")
    assert provenance(tmp_path, "sft", [entry])["files"] == [str(f.relative_to(tmp_path)) for f in files]


def test_an_export_with_splits_in_several_files_loads_through_its_card(tmp_path: Path, monkeypatch) -> None:
    from datasets import load_dataset

    from factory.export.writer import SplitWriter
    from factory.train.data import load

    monkeypatch.setattr(SplitWriter, "ROWS", 2)
    monkeypatch.setattr(SplitWriter, "GROUPS", 1)
    prompts = prompts_where(test=False, n=5, fraction=0.2) + prompts_where(test=True, n=2, fraction=0.2)
    records = [rec(p, f"Short answer {i}.", f"A longer and kinder answer number {i}, with care and detail.")
               for i, p in enumerate(prompts)]
    export(lambda: iter(records), tmp_path, ExportConfig(test_fraction=0.2), HARMLESS, "m", StageStats(),
           lambda c, e: "card")
    assert len(list((tmp_path / "sft").glob("train_sft-*-of-00003.parquet"))) == 3
    data = load(tmp_path, "sft")
    assert data.train.num_rows == 5 and data.test.num_rows == 2 and len(data.provenance["files"]) == 4
    prefs = load_dataset(str(tmp_path), "prefs")
    assert sorted(prefs["train_prefs"]["prompt_id"]) == sorted(prompt_id(p) for p in prompts[:5])


@pytest.mark.parametrize("rows,sizes,files", [(2, (6, 5), 3), (1, (2, 3), 3)])  # 8 rows in 3 parts; 4 rows in 3
def test_the_loop_mixes_earlier_rounds_whose_train_split_is_in_several_files(
        tmp_path: Path, monkeypatch, rows: int, sizes: tuple[int, int], files: int) -> None:
    from types import SimpleNamespace

    from datasets import load_dataset
    from rich.console import Console

    from factory.export.writer import SplitWriter
    from factory.loop.steps import _mix
    from factory.train.data import load

    monkeypatch.setattr(SplitWriter, "ROWS", rows)
    monkeypatch.setattr(SplitWriter, "GROUPS", 1)
    for k, n in enumerate(sizes, start=1):
        prompts = [f"Round {k} question {i} about a topic?" for i in range(n)]
        records = [rec(p, f"Short answer {i}.", f"A longer and kinder answer number {i}, with care.")
                   for i, p in enumerate(prompts)]
        (tmp_path / f"round-{k}" / "run").mkdir(parents=True)
        export(lambda r=records: iter(r), tmp_path / f"round-{k}" / "run", ExportConfig(test_fraction=0.0),
               HARMLESS, "m", StageStats(), lambda c, e: "card")
    cfg = SimpleNamespace(loop=SimpleNamespace(objective="dpo", mix=0.5), pipeline=SimpleNamespace(seed=0))
    _mix(cfg, tmp_path, 2, Console(quiet=True), False)
    total = sizes[1] + round(sizes[0] / 2)  # round 2's rows and half of round 1's
    assert load(tmp_path / "round-2" / "data", "prefs").train.num_rows == total
    ids = load_dataset(str(tmp_path / "round-2" / "data"), "prefs")["train_prefs"]["prompt_id"]
    assert len(set(ids)) == total and len(list((tmp_path / "round-2" / "data" / "prefs").glob("*.parquet"))) == files
