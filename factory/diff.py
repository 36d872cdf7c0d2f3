"""Word-level diffs between two texts: as (op, text) pieces for the report and the review app, and
as rich text for the researcher loop."""

from __future__ import annotations

import difflib
import re

from rich.text import Text


def word_ops(before: str, after: str) -> list[tuple[str, str]]:
    """A word-level diff as (op, text) pieces: "=" kept, "-" deleted, "+" inserted (whitespace kept)."""
    a, b = re.findall(r"\S+|\s+", before), re.findall(r"\S+|\s+", after)
    ops: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            ops.append(("=", "".join(a[i1:i2])))
            continue
        if op in ("delete", "replace"):
            ops.append(("-", "".join(a[i1:i2])))
        if op in ("insert", "replace"):
            ops.append(("+", "".join(b[j1:j2])))
    return ops


def word_diff(before: str, after: str) -> Text:
    """Deleted words in red strike-through `[-...-]`, inserted words in green `{+...+}`."""
    out = Text()
    ops = word_ops(before, after)
    for k, (op, text) in enumerate(ops):
        if op == "=":
            out.append(text)
            continue
        if op == "-":
            out.append("[-" + text.strip() + "-]", style="red strike")
        else:
            out.append("{+" + text.strip() + "+}", style="green")
        if op == "+" or k + 1 == len(ops) or ops[k + 1][0] != "+":
            out.append(" ")  # after each change, as a separator
    return out
