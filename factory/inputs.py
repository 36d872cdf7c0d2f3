"""Prompt files: JSONL, one object per line with a `prompt` string; other fields become metadata.

A file is checked whole before anything runs (errors name the file, line and field), then streamed:
memory does not grow with the number of prompts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from factory.errors import InputError
from factory.limits import Limits, bad_character, limits
from factory.records import Record, prompt_id


class PromptFile:
    """A validated prompts file. Iterating yields (record, is_duplicate) in file order; a duplicate
    (same normalised prompt as an earlier line) is flagged, not yielded twice silently."""

    def __init__(self, path: str | Path, source: str = "file", limit: int | None = None):
        self.path, self.source, self.limit = Path(path), source, limit
        ids = np.fromiter((int(prompt_id(prompt), 16) for _, prompt, _ in self.lines()), dtype=np.uint64)
        if not len(ids):
            raise InputError(self.path, "no prompts in file")
        self.count = len(ids)
        self._duplicate = np.ones(len(ids), dtype=bool)
        self._duplicate[np.unique(ids, return_index=True)[1]] = False

    @property
    def duplicates(self) -> int:
        return int(self._duplicate.sum())

    def __iter__(self) -> Iterator[tuple[Record, bool]]:
        for i, (_, prompt, extra) in enumerate(self.lines()):
            yield Record.new(prompt, self.source, **extra), bool(self._duplicate[i])

    def lines(self) -> Iterator[tuple[int, str, dict]]:
        try:
            handle = self.path.open("rb")
        except OSError as e:
            raise InputError(self.path, f"cannot read prompts file: {e.strerror}") from None
        n, lim = 0, limits()
        with handle:
            for lineno, line in enumerate(handle, 1):
                if self.limit is not None and n >= self.limit:
                    return
                prompt, obj = self._parse(line, lineno, lim)
                if prompt is None:
                    continue
                n += 1
                yield lineno, prompt, obj

    def _parse(self, line: bytes, lineno: int, lim: Limits) -> tuple[str | None, dict]:
        """(prompt, other fields) of one line, or (None, {}) for a blank line. Every error any part of
        the JSON parser can raise (bad syntax, nesting too deep, a number too long) names the line."""
        if len(line) > 4 * lim.prompt_chars + 1_000_000:
            raise InputError(self.path, f"a line of {len(line)} bytes; a prompt may hold at most {lim.prompt_chars} "
                             "characters (FACTORY_MAX_PROMPT_CHARS)", line=lineno)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(self.path, f"not valid UTF-8 (byte 0x{line[e.start]:02x})", line=lineno) from None
        if not text.strip():
            return None, {}
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(self.path, f"broken JSON: {e.msg} (column {e.colno})", line=lineno) from None
        except (ValueError, RecursionError) as e:  # e.g. an integer of 5000 digits, [[[[... 100000 deep
            reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:200]
            raise InputError(self.path, f"broken JSON: {reason}", line=lineno) from None
        if not isinstance(obj, dict):
            raise InputError(self.path, f"expected a JSON object, got {type(obj).__name__}", line=lineno)
        prompt = obj.pop("prompt", None)
        if not isinstance(prompt, str) or not prompt.strip():
            why = "missing" if prompt is None else "must be a non-empty string"
            raise InputError(self.path, why, line=lineno, field="prompt")
        if len(prompt) > lim.prompt_chars:
            raise InputError(self.path, f"{len(prompt)} characters, over the limit of {lim.prompt_chars} "
                             "(FACTORY_MAX_PROMPT_CHARS)", line=lineno, field="prompt")
        for field, value in (("prompt", prompt), *obj.items()):
            for text in (field, *_strings(value)):
                if (bad := bad_character(text)):
                    raise InputError(self.path, bad, line=lineno, field=field)
        return prompt, obj


def _strings(value: object) -> Iterator[str]:
    """Every string (keys too) inside a JSON value."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            yield v
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def read_prompts(path: str | Path, source: str = "file", limit: int | None = None) -> list[Record]:
    """A small file (seed prompts) as a list, duplicates included."""
    return [rec for rec, _ in PromptFile(path, source, limit)]
