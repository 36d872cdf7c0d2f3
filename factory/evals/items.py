"""The eval-set schema: one row per test item, read back with bad rows located, written as a
Hugging Face dataset folder (Parquet plus a README card that `datasets` reads)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from factory.errors import InputError
from factory.yamlfile import jsonl_lines

YES, NO = "Yes", "No"


class Item(BaseModel):
    """A yes/no statement, an A/B choice, or a question with reference answers (`qa`).

    `question` is what the model is asked; `options` the two answers (Yes/No for statements);
    `expected` the option that shows the behaviour (for `qa`: the first reference)."""

    model_config = ConfigDict(extra="forbid")
    id: str
    format: Literal["yesno", "ab", "qa"]
    behaviour: str = Field(min_length=1)
    question: str = Field(min_length=1)
    options: list[str] = Field(default_factory=list)
    expected: str = Field(min_length=1)
    answers: list[str] = Field(default_factory=list)
    wrong_answers: list[str] = Field(default_factory=list, description="QA: answers of the same kind that are "
                                     "wrong; an answer naming one is wrong even when it also names a reference")
    label_confidence: float | None = None
    generator: str = ""
    filter: str = ""
    source: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> Item:
        if self.format == "qa":
            if not self.answers or not all(a.strip() for a in self.answers):
                raise ValueError("answers: a QA item needs a non-empty list of reference answers")
        elif len(self.options) != 2 or self.expected not in self.options:
            raise ValueError("options: a choice item needs exactly two options, one of them `expected`")
        return self

    @property
    def text(self) -> str:
        """The item as one text (for dedup and decontamination)."""
        return " ".join([self.question, *self.options]) if self.format == "ab" else self.question


COLUMNS = list(Item.model_fields)


def write_split(folder: Path, items: list[Item], split: str = "test") -> Path:
    """SPLIT.parquet: the items, in the set's schema."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [i.model_dump() for i in items]
    table = pa.Table.from_pylist(rows, schema=_schema()) if rows else _schema().empty_table()
    pq.write_table(table, folder / f"{split}.parquet")
    return folder / f"{split}.parquet"


def write_set(folder: Path, items: list[Item], card: dict) -> Path:
    """test.parquet, card.json and README.md (the card in prose). No `configs:` metadata naming the
    splits: `datasets` then caches by the folder's name and those relative paths alone, so two sets in
    folders of the same name would load as one (measured); the splits are named by their files."""
    path = write_split(folder, items)
    (folder / "card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    lines = [f"# Model-written eval set: {card['behaviour']}", ""]
    lines += [f"- **{k}**: {json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v}"
              for k, v in card.items() if k != "behaviour"]
    lines += ["", "Columns: " + ", ".join(COLUMNS) + ".", "",
              "Load with `datasets.load_dataset(FOLDER, split='test')`; run with `factory eval --set FOLDER`.", ""]
    if card.get("validation"):
        lines += ["A validation split (`validation.parquet`: `load_dataset(FOLDER, split='validation')`) holds "
                  "further items, disjoint from the test and training ones: `factory pick` chooses a training "
                  "checkpoint on it, `factory eval --set FOLDER --split validation` runs it.", ""]
    (folder / "README.md").write_text("\n".join(lines))
    return path


def _schema() -> pa.Schema:
    s, ls = pa.string(), pa.list_(pa.string())
    return pa.schema([("id", s), ("format", s), ("behaviour", s), ("question", s), ("options", ls),
                      ("expected", s), ("answers", ls), ("wrong_answers", ls), ("label_confidence", pa.float64()),
                      ("generator", s), ("filter", s), ("source", s)])


def read_set(path: Path, split: str = "test") -> list[Item]:
    """A set folder (its SPLIT.parquet: test, or validation), a .parquet file or a .jsonl file (items, or
    prompts with reference `answers` as in evals/idk_qa.jsonl); a bad row exits 2 naming the file, the
    line (row for Parquet) and the field."""
    if path.is_dir():
        if split != "test" and not (path / f"{split}.parquet").is_file():
            raise InputError(path, f"this set has no {split} split (`factory evals generate --validation N` "
                                   "writes one)")
        path = path / f"{split}.parquet"
    elif split != "test":
        raise InputError(path, f"a {split} split is a set folder's: give the folder `factory evals generate` wrote")
    if not path.is_file():
        raise InputError(path, "no such eval set (give a folder written by `factory evals generate`, "
                               "or a .jsonl/.parquet file)")
    if path.suffix == ".parquet":
        try:
            rows = list(enumerate(pq.read_table(path).to_pylist(), 1))
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(path, f"not a readable Parquet file: {e}") from None
    else:
        rows = []
        for n, line in jsonl_lines(path.read_text(encoding="utf-8")):
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise InputError(path, f"not valid JSON ({e.msg})", line=n) from None
    items = []
    for n, row in rows:
        if not isinstance(row, dict):
            raise InputError(path, "expected a JSON object", line=n)
        if "prompt" in row and "question" not in row:  # a prompts file with reference answers (evals/idk_qa.jsonl)
            row = {"format": "qa", "behaviour": "answers factual questions", "question": row.pop("prompt"),
                   "answers": row.get("answers"), "expected": (row.get("answers") or ["-"])[0],
                   **{k: v for k, v in row.items() if k in ("id", "source", "wrong_answers")}}
        row.setdefault("id", f"{path.stem}-{n}")
        try:
            items.append(Item.model_validate(row))
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(map(str, err["loc"])) or str(err["msg"]).split(":", 1)[0].removeprefix("Value error, ")
            raise InputError(path, err["msg"].removeprefix("Value error, "), line=n, field=field) from None
    if not items:
        raise InputError(path, "the eval set holds no items")
    return items
