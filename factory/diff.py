"""Word-level diff between two texts, for the researcher loop."""

from __future__ import annotations

import difflib
import re

from rich.text import Text


def word_diff(before: str, after: str) -> Text:
    """Deleted words in red strike-through `[-...-]`, inserted words in green `{+...+}`."""
    a, b = re.findall(r"\S+|\s+", before), re.findall(r"\S+|\s+", after)
    out = Text()
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append("".join(a[i1:i2]))
            continue
        if op in ("delete", "replace"):
            out.append("[-" + "".join(a[i1:i2]).strip() + "-]", style="red strike")
        if op in ("insert", "replace"):
            out.append("{+" + "".join(b[j1:j2]).strip() + "+}", style="green")
        out.append(" ")
    return out
