"""Load YAML into pydantic models with errors that name the file, the line and the field."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from factory.errors import InputError

M = TypeVar("M", bound=BaseModel)


def read_text(path: Path) -> str:
    """Read a UTF-8 file; a bad byte is reported with its line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, expected a file") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(path, f"not valid UTF-8 (byte 0x{data[e.start]:02x})", line=line) from None


def _compose(path: Path, text: str) -> yaml.Node | None:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise InputError(path, f"malformed YAML: {e.problem or e}", line=mark.line + 1 if mark else None) from None
    _reject_duplicate_keys(path, node)
    return node


def _reject_duplicate_keys(path: Path, node: yaml.Node | None, where: str = "") -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                raise InputError(path, "duplicate key", line=key.start_mark.line + 1, field=where + name)
            seen.add(name)
            _reject_duplicate_keys(path, value, f"{where}{name}.")
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _reject_duplicate_keys(path, item, f"{where}{i}.")


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """The line of the deepest node on the error's path (the key itself for unknown keys)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if str(k.value) == str(part)]
            if not match:
                return line
            key, node = match[0]
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def field_name(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def first_error(path: Path, err: ValidationError, node: yaml.Node | None) -> InputError:
    """The most telling error first: a misspelt key explains the 'missing' one next to it."""
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    e = errors[0]
    loc = tuple(e["loc"])
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        missing = [str(m["loc"][-1]) for m in errors if m["type"] == "missing" and tuple(m["loc"][:-1]) == loc[:-1]]
        close = difflib.get_close_matches(str(loc[-1]), missing, n=1)
        msg = "unknown key" + (f" (did you mean '{close[0]}'?)" if close else " (not allowed here)")
    line = _line_of(node, loc)
    more = f" ({len(errors) - 1} more error(s) after fixing this one)" if len(errors) > 1 else ""
    return InputError(path, msg + more, line=line, field=field_name(loc))


def load_yaml(path: str | Path, model: type[M]) -> M:
    """Parse `path` as YAML and validate it as `model` (which should forbid unknown keys)."""
    path = Path(path)
    text = read_text(path)
    node = _compose(path, text)
    data = yaml.safe_load(text)
    if data is None:
        raise InputError(path, "file is empty")
    if not isinstance(data, dict):
        raise InputError(path, f"expected a mapping at the top level, got {type(data).__name__}", line=1)
    try:
        return model.model_validate(data, context={"path": path})
    except ValidationError as err:
        raise first_error(path, err, node) from None
