"""One prompts source, validated whole before anything runs (errors name the file, the line or row,
and the field), then streamed: memory does not grow with the number of prompts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from factory.config import InputSource
from factory.errors import InputError
from factory.inputs.jsonl import jsonl_rows
from factory.inputs.tables import dataset_rows, parquet_rows
from factory.inputs.turns import Item, RowError, item
from factory.limits import limits
from factory.records import Record

TABLE_SUFFIXES = (".parquet", ".pq")


def format_of(path: Path, spec: InputSource) -> str:
    if spec.format != "auto":
        return spec.format
    if path.is_dir():
        return "dataset"
    return "parquet" if path.suffix.lower() in TABLE_SUFFIXES else "jsonl"


class PromptFile:
    """A validated prompts source (JSONL, Parquet or a dataset; by default a JSONL file of `prompt`s).
    Iterating yields (record, is_duplicate) in row order; a duplicate (the same normalised dialogue as
    an earlier row) is flagged, not yielded twice silently."""

    def __init__(self, path: str | Path, source: str = "file", limit: int | None = None,
                 spec: InputSource | None = None):
        self.path, self.source, self.limit = Path(path), source, limit
        self.spec = spec or InputSource(path=str(path))
        self.format = format_of(self.path, self.spec)
        if not self.path.exists():
            raise InputError(self.path, "no such file or folder")
        if self.format == "dataset" and not self.path.is_dir():
            raise InputError(self.path, "a dataset is a folder (saved with save_to_disk, or of data files)")
        self.ids = ids = np.fromiter((int(it.id, 16) for _, it in self.items()), dtype=np.uint64)
        if not len(ids):
            raise InputError(self.path, "no prompts in file")
        self.count = len(ids)
        self._duplicate = np.ones(len(ids), dtype=bool)
        self._duplicate[np.unique(ids, return_index=True)[1]] = False

    @property
    def duplicates(self) -> int:
        return int(self._duplicate.sum())

    def __iter__(self) -> Iterator[tuple[Record, bool]]:
        for i, (_, it) in enumerate(self.items()):
            yield it.record(self.source), bool(self._duplicate[i])

    def items(self) -> Iterator[tuple[int, Item]]:
        """(line or row number, prompt) of each row, up to the limit."""
        lim, n = limits(), 0
        rows = jsonl_rows(self.path, lim) if self.format == "jsonl" else \
            parquet_rows(self.path, self.spec) if self.format == "parquet" else dataset_rows(self.path, self.spec)
        for number, obj in rows:
            if self.limit is not None and n >= self.limit:
                return
            try:
                it = item(obj, self.spec, lim)
            except RowError as e:
                raise InputError(self.path, e.message, field=e.field, **self.where(number)) from None
            n += 1
            yield number, it

    def where(self, number: int) -> dict[str, int]:
        """An error's place: a JSONL file's line, a table's row."""
        return {"line" if self.format == "jsonl" else "row": number}

    def lines(self) -> Iterator[tuple[int, str, dict]]:
        """(line, prompt, other fields) for readers of single prompts (RL prompts, held-out checks),
        which refuse a conversation rather than keep only its last turn."""
        for number, it in self.items():
            if it.system is not None or it.history:
                raise InputError(self.path, "a conversation (system prompt or earlier turns) where single prompts "
                                 "are expected", field=self.spec.messages_column, **self.where(number))
            yield number, it.prompt, it.extra


def read_prompts(path: str | Path, source: str = "file", limit: int | None = None,
                 spec: InputSource | None = None) -> list[Record]:
    """A small file (seed prompts) as a list, duplicates included."""
    return [rec for rec, _ in PromptFile(path, source, limit, spec)]
