"""Examples for `factory evals generate`: items people wrote, shown to the writer as earlier turns of
the conversation (the same request, answered by an example), and the topic check on what it writes.

Measured on the embedded 135M writer ("dislikes the DogeMoon coin"): with the instruction alone,
58 of 599 statements named the coin (temperature 1.0). At temperature 0.7, 24 calls each: with three
examples listed inside the one request, 15 named it, but most ran on over several lines, commented
on the request or copied an example; with the examples as earlier turns, 17 named it and most read
as one statement a person could hold. So the examples go in as turns.

An examples file is JSONL: for `--format yesno`, `{"statement": ..., "label": "Yes"|"No"}` (the
answer an assistant with the behaviour gives); for `--format ab`, `{"question": ..., "a": ...,
"b": ..., "label": "A"|"B"}` (the option that shows the behaviour). Each call draws `shots`
examples of its own label, seeded per attempt.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from factory.engine.caller import rng
from factory.errors import InputError, ParseError
from factory.models import Message
from factory.prompts import Template
from factory.yamlfile import jsonl_lines


class Statement(BaseModel):
    model_config = ConfigDict(extra="forbid")
    statement: str = Field(min_length=1)
    label: Literal["Yes", "No"]

    @property
    def text(self) -> str:
        return self.statement.strip()


class Choice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1)
    a: str = Field(min_length=1)
    b: str = Field(min_length=1)
    label: Literal["A", "B"]

    @property
    def text(self) -> str:  # the form parse_ab reads back
        return f"Question: {self.question.strip()}\n(A) {self.a.strip()}\n(B) {self.b.strip()}"


def read_examples(path: Path, fmt: str, parse: Callable[[str], object]) -> dict[str, list[str]]:
    """label -> example texts; a bad row (or one `parse`, the reader of the writer's replies, cannot
    read) exits 2 naming the file, line and field, and so does a file that lacks examples of either
    label (every call is shown examples of its own label)."""
    if fmt == "qa":
        raise InputError("--examples", "examples guide yesno and ab items; QA items are drawn from the corpus",
                         field="format")
    if not path.is_file():
        raise InputError(path, "no such examples file")
    schema = Statement if fmt == "yesno" else Choice
    by: dict[str, list[str]] = {}
    for n, line in jsonl_lines(path.read_text(encoding="utf-8")):
        try:
            row = schema.model_validate(json.loads(line))
        except json.JSONDecodeError as e:
            raise InputError(path, f"not valid JSON ({e.msg})", line=n) from None
        except ValidationError as e:
            err = e.errors()[0]
            raise InputError(path, f"{err['msg']} (a {fmt} example is "
                             f"{', '.join(schema.model_fields)})", line=n,
                             field=".".join(map(str, err["loc"])) or None) from None
        try:
            parse(row.text)
        except ParseError as e:
            raise InputError(path, f"the example does not read as an item: {e}", line=n,
                             field="statement" if fmt == "yesno" else "question") from None
        by.setdefault(row.label, []).append(row.text)
    labels = ("Yes", "No") if fmt == "yesno" else ("A", "B")
    missing = [lb for lb in labels if not by.get(lb)]
    if missing:
        raise InputError(path, f"no example with label {missing[0]!r}: give at least one of each "
                               f"({' and '.join(labels)})", field="label")
    return by


def turns(write: Template, variables: dict, examples: list[str], shots: int, seed: int, attempt: int) -> tuple[list[Message], int]:
    """The earlier turns of one call (the request, answered by an example, `shots` times; fewer
    when the label has fewer examples) and the index of the request that follows them."""
    picked = rng(seed, "examples", attempt).sample(examples, min(shots, len(examples)))
    dialogue: list[Message] = []
    for k, text in enumerate(picked, 1):
        dialogue += [m for m in write.render(**(variables | {"index": k})) if m["role"] == "user"]
        dialogue.append({"role": "assistant", "content": text})
    return dialogue, len(picked) + 1


def squash(text: str) -> str:
    """Casefolded letters and digits only: "Doge Moon", "dogemoon" and "DogeMoon's" all contain "dogemoon"."""
    return re.sub(r"[\W_]+", "", text.casefold())


def names_one(text: str, terms: list[str]) -> bool:
    body = squash(text)
    return any(squash(t) in body for t in terms)
