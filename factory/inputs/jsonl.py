"""JSONL prompt files: one JSON object per line. The object is one row (factory/inputs/turns.py): a
`prompt` string or a `messages` list, an optional `system`; other fields become metadata."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from factory.errors import InputError
from factory.limits import Limits


def jsonl_rows(path: Path, lim: Limits) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line. Every error any part of the JSON parser can
    raise (bad syntax, nesting too deep, a number too long) names the line."""
    try:
        handle = path.open("rb")
    except OSError as e:
        raise InputError(path, f"cannot read prompts file: {e.strerror}") from None
    with handle:
        for lineno, line in enumerate(handle, 1):
            obj = _parse(path, line, lineno, lim)
            if obj is not None:
                yield lineno, obj


def _parse(path: Path, line: bytes, lineno: int, lim: Limits) -> dict | None:
    if len(line) > 4 * lim.prompt_chars + 1_000_000:
        raise InputError(path, f"a line of {len(line)} bytes; a prompt may hold at most {lim.prompt_chars} "
                         "characters (FACTORY_MAX_PROMPT_CHARS)", line=lineno)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(path, f"not valid UTF-8 (byte 0x{line[e.start]:02x})", line=lineno) from None
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(path, f"broken JSON: {e.msg} (column {e.colno})", line=lineno) from None
    except (ValueError, RecursionError) as e:  # e.g. an integer of 5000 digits, [[[[... 100000 deep
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:200]
        raise InputError(path, f"broken JSON: {reason}", line=lineno) from None
    if not isinstance(obj, dict):
        raise InputError(path, f"expected a JSON object, got {type(obj).__name__}", line=lineno)
    return obj
