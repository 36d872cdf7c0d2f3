"""Preference pairs for discovery: read from any of the usual places, validated before any call.

Accepted: a JSONL or Parquet file, a run directory or dataset folder in our export format (its
`prefs` config), a Hugging Face dataset folder (a README.md whose YAML header lists `configs`, or
loose Parquet/JSONL files), or a folder written by `datasets`' `save_to_disk`. Each row needs
`prompt`, `chosen` and `rejected`, as strings or as TRL message lists (explicit prompt, or the
implicit form where `chosen`/`rejected` are whole conversations and `prompt` is absent).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from factory.errors import InputError
from factory.export.card import paths
from factory.records import prompt_id

FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PrefPair:
    prompt: str
    chosen: str
    rejected: str
    where: str  # file:row, for messages and the report

    @property
    def prompt_id(self) -> str:
        return prompt_id(self.prompt)


def _turns(value: list, path: Path, line: int, field: str) -> list[tuple[str, str]]:
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
            raise InputError(path, f"message {i} is not a {{role, content}} object", line=line, field=field)
        out.append((m["role"], m["content"]))
    return out


def _render(turns: list[tuple[str, str]]) -> str:
    """One user turn is its text; a longer conversation is shown turn by turn."""
    if len(turns) == 1:
        return turns[0][1].strip()
    return "\n\n".join(f"{role.capitalize()}: {text.strip()}" for role, text in turns)


def pair_of(row: dict, path: Path, line: int) -> PrefPair:
    """One row as a pair, or an InputError naming the file, row and field."""
    if not isinstance(row, dict):
        raise InputError(path, f"expected an object with {', '.join(FIELDS)}, got {type(row).__name__}", line=line)
    answers, implicit = {}, None
    for field in ("chosen", "rejected"):
        value = row.get(field)
        if isinstance(value, str):
            text = value
        elif isinstance(value, list) and value:
            turns = _turns(value, path, line, field)
            if turns[-1][0] != "assistant":
                raise InputError(path, "the last message must be the assistant's answer", line=line, field=field)
            text = turns[-1][1]
            if len(turns) > 1:
                implicit = implicit or turns[:-1]
        else:
            why = "missing" if value is None else "must be a string or a non-empty list of messages"
            raise InputError(path, why, line=line, field=field)
        if not text.strip():
            raise InputError(path, "empty answer", line=line, field=field)
        answers[field] = text.strip()
    value = row.get("prompt")
    if isinstance(value, str):
        prompt = value.strip()
    elif isinstance(value, list) and value:
        prompt = _render(_turns(value, path, line, "prompt"))
    elif value is None and implicit:  # TRL's implicit prompt: the conversation before the answer
        prompt = _render(implicit)
    else:
        raise InputError(path, "missing" if value is None else "must be a string or a list of messages",
                         line=line, field="prompt")
    if not prompt:
        raise InputError(path, "empty prompt", line=line, field="prompt")
    return PrefPair(prompt, answers["chosen"], answers["rejected"], f"{path.name}:{line}")


def _jsonl(path: Path) -> Iterator[tuple[int, object]]:
    try:
        lines = path.read_bytes().splitlines()
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror}") from None
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            yield n, json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(path, f"broken JSON: {e}", line=n) from None


def _parquet(path: Path) -> Iterator[tuple[int, object]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 (pyarrow raises several types for a bad file)
        raise InputError(path, f"not a readable Parquet file: {e}") from None
    _require_columns(path, table.column_names)
    yield from enumerate(table.to_pylist(), 1)


def _require_columns(path: Path, columns: Iterable[str]) -> None:
    columns = set(columns)
    implicit = {"chosen", "rejected"} <= columns
    for field in FIELDS:
        if field not in columns and not (field == "prompt" and implicit):
            raise InputError(path, f"no '{field}' column (it has: {', '.join(sorted(columns)) or 'none'}); "
                             "a preference dataset needs prompt, chosen and rejected", field=field)


def _rows_of_file(path: Path) -> Iterator[tuple[Path, int, object]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        reader = _parquet(path)
    elif suffix in (".jsonl", ".json", ".ndjson"):
        reader = _jsonl(path)
    else:
        raise InputError(path, "expected a .jsonl or .parquet file, a run directory or a dataset folder")
    for n, row in reader:
        yield path, n, row


def _card_files(folder: Path) -> list[Path] | None:
    """The data files of the `prefs` config (else `default`, else the first) in README.md's YAML header."""
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8")
    if not text.startswith("---") or text.count("---") < 2:
        return None
    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError as e:
        raise InputError(readme, f"unreadable YAML header: {e}") from None
    configs = [c for c in (meta.get("configs") or []) if isinstance(c, dict)] if isinstance(meta, dict) else []
    if not configs:
        return None
    by_name = {c.get("config_name", "default"): c for c in configs}
    config = by_name.get("prefs") or by_name.get("default") or configs[0]
    entries = config.get("data_files") or []
    patterns = paths(entries) if isinstance(entries, str) else [p for entry in entries for p in paths(entry)]
    files = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    if not files:
        raise InputError(readme, f"config '{config.get('config_name', 'default')}' lists no data file that exists",
                         field="configs")
    return files


def _rows_of_folder(folder: Path) -> Iterator[tuple[Path, int, object]]:
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        from datasets import Dataset, load_from_disk

        ds = load_from_disk(str(folder))
        splits = [ds] if isinstance(ds, Dataset) else [ds[name] for name in sorted(ds)]
        for split in splits:
            _require_columns(folder, split.column_names)
            for n, row in enumerate(split, 1):
                yield folder, n, row
        return
    files = _card_files(folder)
    if files is None:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".parquet", ".jsonl") and p.is_file())
    if not files:
        raise InputError(folder, "no preference data here: expected a run directory, a dataset folder "
                         "(README.md with `configs`, or Parquet/JSONL files) or a `save_to_disk` folder")
    for f in files:
        yield from _rows_of_file(f)


def read_pairs(source: Path) -> list[PrefPair]:
    """Every pair of SOURCE, each row validated; the first bad row raises an InputError."""
    if not source.exists():
        raise InputError(source, "no such file or folder")
    rows = _rows_of_folder(source) if source.is_dir() else _rows_of_file(source)
    pairs = [pair_of(row, path, n) for path, n, row in rows]
    if not pairs:
        raise InputError(source, "no preference pairs in it")
    return pairs


def split_by_prompt(pairs: list[PrefPair], fraction: float, seed: int) -> tuple[list[PrefPair], list[PrefPair]]:
    """(proposal pairs, held-out pairs): whole prompts are held out, never part of one. The prompts
    are ordered by a seeded hash and the first round(fraction x prompts) (at least one) held out,
    so small datasets get the exact share asked for."""
    ids = sorted({p.prompt_id for p in pairs}, key=lambda pid: hashlib.sha256(f"{seed}:{pid}".encode()).hexdigest())
    held = set(ids[:max(1, round(fraction * len(ids)))]) if fraction > 0 else set()
    return [p for p in pairs if p.prompt_id not in held], [p for p in pairs if p.prompt_id in held]
