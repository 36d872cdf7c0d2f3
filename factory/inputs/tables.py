"""Tables of prompts: a Parquet file (read with pyarrow, batch by batch) or a Hugging Face dataset (a
`save_to_disk` folder, or a folder `load_dataset` reads; memory-mapped Arrow, read batch by batch).
Rows are numbered from 1, in table order; a mapped column the table lacks fails at row 1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from factory.config import InputSource
from factory.errors import InputError

BATCH = 1024


def parquet_rows(path: Path, spec: InputSource) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError...: every one means "not a Parquet file"
        raise InputError(path, f"cannot read as Parquet: {str(e)[:200]}") from None
    check_columns(path, table.schema_arrow.names, spec)
    n = 0
    for batch in table.iter_batches(batch_size=BATCH):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def dataset_rows(path: Path, spec: InputSource) -> Iterator[tuple[int, dict[str, Any]]]:
    ds = load(path, spec)
    check_columns(path, ds.column_names, spec)
    n = 0
    for batch in ds.iter(batch_size=BATCH):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns), strict=True):
            n += 1
            yield n, dict(zip(columns, values, strict=True))


def load(path: Path, spec: InputSource):
    """The one split of the dataset at `path` that `spec` names (default: train, or the only one)."""
    import datasets

    saved = any((path / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json"))
    try:
        if saved:
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(str(path), spec.subset)
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as e:
        raise InputError(path, f"cannot load as a Hugging Face dataset: {str(e)[:300]}") from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        name = spec.split or ("train" if "train" in splits else splits[0] if len(splits) == 1 else None)
        if name not in ds:
            raise InputError(path, f"choose a split with `split:` (or --split): it has {', '.join(splits)}",
                             field="split")
        ds = ds[name]
    elif spec.split is not None:
        raise InputError(path, "has no splits, but a split was named", field="split")
    return ds


def check_columns(path: Path, names: list[str], spec: InputSource) -> None:
    """A column the mapping names explicitly must exist; else one of prompt and messages must."""
    explicit = spec.model_fields_set
    wanted = [getattr(spec, f) for f in ("text_column", "messages_column", "prompt_column", "system_column")
              if f in explicit and getattr(spec, f) is not None]
    for column in wanted:
        if column not in names:
            raise InputError(path, f"no such column (the table has: {', '.join(names)})", row=1, field=column)
    if not wanted and spec.prompt_column not in names and spec.messages_column not in names:
        raise InputError(path, f"needs a '{spec.prompt_column}' or '{spec.messages_column}' column, or a column "
                         f"mapping (--prompt-column, --messages-column, --text-column); it has: {', '.join(names)}",
                         row=1, field=spec.prompt_column)
