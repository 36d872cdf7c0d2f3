"""Prompt files: JSONL, one object per line with a `prompt` string; other fields become metadata."""

from __future__ import annotations

import json
from pathlib import Path

from factory.errors import InputError
from factory.records import Record


def read_prompts(path: str | Path, source: str = "file", limit: int | None = None) -> list[Record]:
    """Read and validate the whole file before anything runs; errors name the file, line and field."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(path, f"cannot read prompts file: {e.strerror}") from None
    records: list[Record] = []
    for lineno, line in enumerate(raw.split(b"\n"), 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(path, f"not valid UTF-8 (byte 0x{line[e.start]:02x})", line=lineno) from None
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(path, f"broken JSON: {e.msg} (column {e.colno})", line=lineno) from None
        if not isinstance(obj, dict):
            raise InputError(path, f"expected a JSON object, got {type(obj).__name__}", line=lineno)
        prompt = obj.pop("prompt", None)
        if not isinstance(prompt, str) or not prompt.strip():
            why = "missing" if prompt is None else "must be a non-empty string"
            raise InputError(path, why, line=lineno, field="prompt")
        if limit is None or len(records) < limit:
            records.append(Record.new(prompt, source, **obj))
    if not records:
        raise InputError(path, "no prompts in file")
    return records
