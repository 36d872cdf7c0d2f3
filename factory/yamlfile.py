"""Load YAML into pydantic models with errors that name the file, the line and the field."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from factory.errors import InputError
from factory.limits import bad_character, limits

M = TypeVar("M", bound=BaseModel)


# libyaml's loader when installed (about 50x faster than the pure-Python one); both are safe loaders.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def jsonl_lines(text: str) -> list[tuple[int, str]]:
    """The non-blank lines of a JSON-lines text with their line numbers (from 1), split at "\\n" only:
    `str.splitlines()` also splits at U+2028, U+2029, U+0085 and other separators, which a JSON string
    may hold unescaped (a model wrote U+2028 into an answer, and a reader using splitlines() failed on
    the half-lines)."""
    return [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]


def read_text(path: Path) -> str:
    """Read a UTF-8 file of at most FACTORY_MAX_FILE_MB; a bad byte is reported with its line."""
    path = Path(path)
    cap = limits().file_bytes
    try:
        with path.open("rb") as handle:
            data = handle.read(cap + 1)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, expected a file") from None
    except OSError as e:
        raise InputError(path, f"cannot read it: {e.strerror or e}") from None
    if len(data) > cap:
        raise InputError(path, f"larger than {cap / 2**20:.3g} MB; raise FACTORY_MAX_FILE_MB if it is meant to be")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(path, f"not valid UTF-8 (byte 0x{data[e.start]:02x})", line=line) from None


def _yaml_error(path: Path, text: str, e: yaml.YAMLError) -> InputError:
    """Any error of PyYAML's hierarchy, located: marked errors by their mark, reader errors by position."""
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or str(e)
        return InputError(path, f"malformed YAML: {problem}", line=mark.line + 1 if mark else None)
    position = getattr(e, "position", None)
    line = text.count("\n", 0, position) + 1 if isinstance(position, int) else None
    reason = getattr(e, "reason", None) or str(e).splitlines()[0]
    return InputError(path, f"malformed YAML: {reason}", line=line)


def _compose(path: Path, text: str) -> yaml.Node | None:
    try:
        node = yaml.compose(text, Loader=LOADER)
    except yaml.YAMLError as e:
        raise _yaml_error(path, text, e) from None
    except RecursionError:
        raise InputError(path, "malformed YAML: nested too deeply") from None
    _check_nodes(path, node)
    return node


def _construct(path: Path, text: str, node: yaml.Node) -> object:
    """Python objects from the checked node graph (no second parse). Tags the safe loader does not
    know, and values its constructors refuse (a bad !!binary, !!timestamp or !!int), are input errors."""
    loader = LOADER("")
    try:
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise _yaml_error(path, text, e) from None
    except Exception as e:  # noqa: BLE001 - constructors raise ValueError, KeyError (!!bool maybe), TypeError...
        raise InputError(path, f"malformed YAML: a value its tag cannot hold ({type(e).__name__}: {e})"[:300],
                         line=_failing_line(node)) from None
    finally:
        loader.dispose()


def _failing_line(root: yaml.Node) -> int:
    """The line of the first scalar whose constructor refuses it (each constructed alone)."""
    stack, seen = [root], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            loader = LOADER("")
            try:
                loader.construct_object(node, deep=True)
            except Exception:
                return node.start_mark.line + 1
            finally:
                loader.dispose()
        stack.extend(reversed([c for c, _ in _children(node)]))
    return root.start_mark.line + 1


def _check_nodes(path: Path, root: yaml.Node | None) -> None:
    """One pass over the node graph, each node visited once (an alias shares its anchor's node, so
    a billion-laughs file costs what its text costs): duplicate keys, alias uses, the size once
    aliases are expanded, recursive aliases, and characters no text may hold."""
    if root is None:
        return
    lim = limits()
    size: dict[int, int] = {}  # id(node) -> nodes once expanded
    aliases = 0
    stack: list[tuple[yaml.Node, str, bool]] = [(root, "", False)]
    open_nodes: set[int] = set()
    while stack:
        node, where, done = stack.pop()
        key = id(node)
        if done:
            children = _children(node)
            size[key] = 1 + sum(size[id(c)] for c, _ in children)
            open_nodes.discard(key)
            if size[key] > lim.yaml_nodes:
                raise InputError(path, f"expands to more than {lim.yaml_nodes} nodes through its aliases; refused "
                                 "(FACTORY_MAX_YAML_NODES)", line=node.start_mark.line + 1)
            continue
        if key in size or key in open_nodes:
            aliases += 1
            if key in open_nodes:
                raise InputError(path, "a recursive alias (an anchor used inside itself)", line=node.start_mark.line + 1)
            if aliases > lim.yaml_aliases:
                raise InputError(path, f"more than {lim.yaml_aliases} alias uses (the last of the anchor on this line); "
                                 "refused (FACTORY_MAX_YAML_ALIASES)", line=node.start_mark.line + 1)
            continue
        if isinstance(node, yaml.ScalarNode):
            if isinstance(node.value, str) and (bad := bad_character(node.value)):
                raise InputError(path, bad, line=node.start_mark.line + 1, field=where.rstrip(".") or None)
            size[key] = 1
            continue
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for k, _ in node.value:
                name = key_name(k)
                if name in seen:
                    raise InputError(path, "duplicate key", line=k.start_mark.line + 1, field=where + name)
                seen.add(name)
        open_nodes.add(key)
        stack.append((node, where, True))
        stack.extend((c, f"{where}{label}.", False) for c, label in reversed(_children(node)))


def key_name(key: yaml.Node) -> str:
    """A mapping key as text; a list or mapping used as a key (legal YAML, never a valid field) by its line."""
    return str(key.value) if isinstance(key, yaml.ScalarNode) else f"<{key.id} key at line {key.start_mark.line + 1}>"


def _children(node: yaml.Node) -> list[tuple[yaml.Node, str]]:
    if isinstance(node, yaml.MappingNode):
        return [c for k, v in node.value for c in ((k, key_name(k)), (v, key_name(k)))]
    if isinstance(node, yaml.SequenceNode):
        return [(item, str(i)) for i, item in enumerate(node.value)]
    return []


def _walk(node: yaml.Node | None, loc: tuple) -> tuple[int | None, bool]:
    """Follow the error's path through the node graph: the line of the deepest node reached (the key
    itself for a mapping entry), and whether the whole path was there."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if key_name(k) == str(part)]
            if not match:
                return line, False
            key, node = match[0]
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line, False
    return line, True


def line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """The line of the deepest node on the error's path (the key itself for unknown keys)."""
    return _walk(node, loc)[0]


def field_name(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


Layers = list[tuple[Path, "yaml.Node | None"]]


def locate(layers: Layers, loc: tuple) -> tuple[Path, int | None]:
    """The file (a config and those it extends, nearest first) that sets the field, and its line; a
    field none sets (a missing key) is the first file's."""
    walks = [(path, *_walk(node, loc)) for path, node in layers]
    return next(((path, line) for path, line, whole in walks if whole), walks[0][:2])


def first_error(layers: Layers, err: ValidationError) -> InputError:
    """The most telling error first: a misspelt key explains the 'missing' one next to it."""
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    e = errors[0]
    loc = tuple(e["loc"])
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        missing = [str(m["loc"][-1]) for m in errors if m["type"] == "missing" and tuple(m["loc"][:-1]) == loc[:-1]]
        close = difflib.get_close_matches(str(loc[-1]), missing, n=1)
        msg = "unknown key" + (f" (did you mean '{close[0]}'?)" if close else " (not allowed here)")
    path, line = locate(layers, loc)
    more = f" ({len(errors) - 1} more error(s) after fixing this one)" if len(errors) > 1 else ""
    return InputError(path, msg + more, line=line, field=field_name(loc))


def _read_mapping(path: Path) -> tuple[yaml.Node | None, dict]:
    text = read_text(path)
    node = _compose(path, text)
    data = None if node is None else _construct(path, text, node)
    if data is None:
        raise InputError(path, "file is empty")
    if not isinstance(data, dict):
        raise InputError(path, f"expected a mapping at the top level, got {type(data).__name__}", line=1)
    return node, data


def _merge(base: object, over: object) -> object:
    """`over` on top of `base`: mappings key by key, all the way down; anything else (a list too) replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        return base | {k: _merge(base[k], v) if k in base else v for k, v in over.items()}
    return over


def read_layers(path: Path) -> tuple[Layers, dict]:
    """The file and those it `extends` (nearest first), and their keys merged. The base must sit in the
    same folder, so that every relative path in either resolves against that one folder."""
    layers: Layers = []
    merged: list[dict] = []
    while True:
        node, data = _read_mapping(path)
        layers.append((path, node))
        base = data.pop("extends", None)
        merged.append(data)
        if base is None:
            break
        line = line_of(node, ("extends",))
        if not isinstance(base, str) or Path(base).name != base or base in (".", ".."):
            raise InputError(path, "must name a YAML file in this file's folder (relative paths in both "
                                   "resolve against that one folder)", line=line, field="extends")
        nxt = path.parent / base
        if nxt.resolve() in {p.resolve() for p, _ in layers}:
            raise InputError(path, f"makes a cycle through {base}: remove one of the extends", line=line,
                             field="extends")
        if not nxt.is_file():
            raise InputError(path, f"{base}: no such file in {path.parent}", line=line, field="extends")
        path = nxt
    data: object = {}
    for layer in reversed(merged):
        data = _merge(data, layer)
    return layers, data


def load_yaml(path: str | Path, model: type[M], *, extends: bool = False) -> M:
    """Parse `path` as YAML and validate it as `model` (which should forbid unknown keys). With `extends`,
    the file may start from another (`extends: NAME.yaml`): its keys on top of that file's, mappings
    merged key by key, lists and other values replaced."""
    path = Path(path)
    if extends:
        return load_layered(path, model)[0]
    node, data = _read_mapping(path)
    return _validate(path, model, [(path, node)], data)


def load_layered(path: Path, model: type[M]) -> tuple[M, Layers]:
    """`load_yaml(path, model, extends=True)`, and the files it read (for locating later errors)."""
    layers, data = read_layers(path)
    return _validate(path, model, layers, data), layers


def _validate(path: Path, model: type[M], layers: Layers, data: dict) -> M:
    try:
        return model.model_validate(data, context={"path": path})
    except ValidationError as err:
        raise first_error(layers, err) from None
