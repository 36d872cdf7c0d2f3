"""One input row (a JSON object or a table row) as a prompt: a plain `prompt`, an OpenAI-style
`messages` list, or a text in the Human/Assistant layout, with an optional system prompt. Which
columns hold what is the source's column mapping (config.InputSource). Every error names the field."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from factory.config import InputSource
from factory.limits import Limits, bad_character
from factory.records import Record, Turn, dialogue_id, prompt_id

ROLES = ("system", "user", "assistant")
# A speaker label of the Human/Assistant layout: at the very start, or after a blank line. A colon
# inside a turn ("Note: ...") is text, not a speaker (splitting on ": " truncates such prompts).
_SPEAKER = re.compile(r"(?:\A\s*|\n\n)(Human|Assistant):[ \t]?")


class RowError(ValueError):
    """What is wrong with one row, and in which field; the reader adds the file and line or row."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


@dataclass
class Item:
    """One prompt as read: the user's last turn, the system prompt, the earlier turns, other fields."""

    prompt: str
    system: str | None = None
    history: list[Turn] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return dialogue_id(self.system, self.history, self.prompt) if self.system is not None or self.history \
            else prompt_id(self.prompt)

    def record(self, source: str) -> Record:
        return Record.dialogue(self.prompt, source, system=self.system, history=self.history, **self.extra)


def item(obj: dict[str, Any], spec: InputSource, lim: Limits) -> Item:
    """The prompt a row holds, by the source's column mapping. Raises RowError naming the field."""
    obj = dict(obj)
    explicit = spec.model_fields_set
    if spec.text_column is not None:
        column, how = spec.text_column, "text"
    elif "messages_column" in explicit or ("prompt_column" not in explicit and obj.get(spec.messages_column) is not None):
        column, how = spec.messages_column, "messages"
        if "messages_column" not in explicit and obj.get(spec.prompt_column) is not None:
            raise RowError(spec.prompt_column, f"given with '{spec.messages_column}': keep one of the two")
    else:
        column, how = spec.prompt_column, "prompt"
    if column not in obj or obj[column] is None:
        raise RowError(column, "missing")
    value = obj.pop(column)
    if how == "prompt":
        if not isinstance(value, str) or not value.strip():
            raise RowError(column, "must be a non-empty string")
        it = Item(value)
    elif how == "messages":
        it = from_messages(value, column)
    else:
        it = from_layout(value, column)
    system = obj.pop(spec.system_column, None)
    if system is not None:
        if not isinstance(system, str) or not system.strip():
            raise RowError(spec.system_column, "must be a non-empty string")
        if it.system is not None:
            raise RowError(spec.system_column, f"a second system prompt: '{column}' starts with one already")
        it.system = system.strip()
    total = len(it.prompt) + len(it.system or "") + sum(len(t.content) for t in it.history)
    if total > lim.prompt_chars:
        raise RowError(column, f"{total} characters, over the limit of {lim.prompt_chars} (FACTORY_MAX_PROMPT_CHARS)")
    for text in (it.prompt, it.system or "", *(t.content for t in it.history)):
        if (bad := bad_character(text)):
            raise RowError(column, bad)
    for name, v in obj.items():
        for text in (name, *strings(v)):
            if (bad := bad_character(text)):
                raise RowError(name, bad)
    if spec.kind is not None:
        obj.setdefault("kind", spec.kind)
    it.extra = obj | it.extra
    return it


def from_messages(value: Any, column: str) -> Item:
    """An OpenAI-style chat: [{"role", "content"}, ...], an optional system turn first, the user's last."""
    if not isinstance(value, list) or not value:
        raise RowError(column, "must be a non-empty list of {\"role\": ..., \"content\": ...} turns")
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(value):
        where = f"{column}[{i}]"
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RowError(where, "each turn must be an object with 'role' and 'content'")
        role, content = m["role"], _content(m["content"], where)
        if role not in ROLES:
            raise RowError(f"{where}.role", f"unknown role {role!r} (expected one of: {', '.join(ROLES)})")
        if role == "system" and i > 0:
            raise RowError(f"{where}.role", "a system turn may only come first")
        if not content.strip():
            raise RowError(f"{where}.content", "empty")
        turns.append((role, content.strip()))
    return _dialogue(turns, column)


def _content(content: Any, where: str) -> str:
    """A turn's text: a string, or a list of text parts ({"type": "text", "text": ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise RowError(f"{where}.content", "must be a string (or a list of text parts)")


def from_layout(value: Any, column: str) -> Item:
    """A text in the "\\n\\nHuman: ...\\n\\nAssistant: ..." layout. A final assistant turn (the answer
    this run replaces) is set aside as metadata `original_answer`; an empty final "Assistant:" is the
    cue for the reply and is dropped."""
    if not isinstance(value, str) or not value.strip():
        raise RowError(column, "must be a non-empty string in the Human/Assistant layout")
    parts = _SPEAKER.split(value)
    if parts[0].strip():
        raise RowError(column, f"text before the first 'Human:' turn: {parts[0].strip()[:60]!r}")
    turns = [("user" if who == "Human" else "assistant", text.strip()) for who, text in zip(parts[1::2], parts[2::2])]
    if not turns:
        raise RowError(column, "no 'Human:' or 'Assistant:' turn (the layout is \"\\n\\nHuman: ...\\n\\nAssistant: ...\")")
    original = None
    if turns[-1][0] == "assistant":
        original = turns.pop()[1] or None
    for i, (role, text) in enumerate(turns):
        if not text:
            raise RowError(column, f"turn {i + 1} ({'Human' if role == 'user' else 'Assistant'}) is empty")
    it = _dialogue(turns, column)
    if original is not None:
        it.extra["original_answer"] = original
    return it


def _dialogue(turns: list[tuple[str, str]], column: str) -> Item:
    system = turns.pop(0)[1] if turns and turns[0][0] == "system" else None
    if not turns:
        raise RowError(column, "no user turn")
    if turns[0][0] != "user":
        raise RowError(column, "the first turn after the system prompt must be the user's")
    if turns[-1][0] != "user":
        raise RowError(column, "the last turn is the assistant's: a prompt must end with the user's turn "
                               "(drop the final answer: this run writes it)")
    return Item(turns[-1][1], system, [Turn(role=r, content=c) for r, c in turns[:-1]])


def strings(value: object) -> Iterator[str]:
    """Every string (keys too) inside a JSON value."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            yield v
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)
