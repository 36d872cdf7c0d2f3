"""Bounds on what a user's files may hold, so that no input can take minutes or gigabytes to refuse.

Each limit has a default and an environment variable that overrides it (documented in the README,
section "Input limits"):

  FACTORY_MAX_FILE_MB         size of a YAML or JSON file (config, constitution, template) (10)
  FACTORY_MAX_PROMPT_CHARS    characters in one prompt, or in all the turns of a conversation (200000)
  FACTORY_MAX_PRINCIPLE_CHARS characters in one text of a constitution: a principle's critique,
                              revision or judge text, an example's field (20000)
  FACTORY_MAX_YAML_ALIASES    alias uses (*name) in one YAML file (1000)
  FACTORY_MAX_YAML_NODES      nodes of a YAML file once its aliases are expanded (1000000)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from factory.errors import FactoryError

DEFAULTS = {
    "FACTORY_MAX_FILE_MB": 10.0,
    "FACTORY_MAX_PROMPT_CHARS": 200_000,
    "FACTORY_MAX_PRINCIPLE_CHARS": 20_000,
    "FACTORY_MAX_YAML_ALIASES": 1000,
    "FACTORY_MAX_YAML_NODES": 1_000_000,
}
# C0 controls other than tab, newline and carriage return; DEL; lone surrogates (a "\ud800" escape in
# JSON or YAML decodes to one, and no UTF-8 encoder, hash or Parquet writer accepts it).
_BAD_CHAR = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


@dataclass(frozen=True)
class Limits:
    file_bytes: int
    prompt_chars: int
    principle_chars: int
    yaml_aliases: int
    yaml_nodes: int


def limits() -> Limits:
    """The limits in force, read from the environment each time (tests and users may change them)."""
    values = {}
    for var, default in DEFAULTS.items():
        raw = os.environ.get(var, "").strip()
        try:
            values[var] = type(default)(raw) if raw else default
        except ValueError:
            raise FactoryError(f"{var} must be a number, got {raw!r}") from None
        if values[var] <= 0:
            raise FactoryError(f"{var} must be positive, got {raw!r}")
    return Limits(int(values["FACTORY_MAX_FILE_MB"] * 1024 * 1024), int(values["FACTORY_MAX_PROMPT_CHARS"]),
                  int(values["FACTORY_MAX_PRINCIPLE_CHARS"]), int(values["FACTORY_MAX_YAML_ALIASES"]),
                  int(values["FACTORY_MAX_YAML_NODES"]))


def bad_character(text: str) -> str | None:
    """A description of the first character no prompt may hold (NUL, other controls, a lone
    surrogate), or None when the text is clean."""
    m = _BAD_CHAR.search(text)
    if m is None:
        return None
    kind = "a lone surrogate" if "\ud800" <= m.group() <= "\udfff" else "a control character"
    return f"{kind} U+{ord(m.group()):04X} at character {m.start() + 1}; remove it"
