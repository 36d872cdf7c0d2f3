"""Typed records. A record carries its whole lineage: where its prompt came from, every call that
shaped it (template and hash, model, usage), each candidate, each critique and revision round."""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Typed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CallRef(Typed):
    """One model call, as lineage: enough to find it in calls.sqlite and to explain the row."""

    stage: str
    purpose: str  # e.g. "answer[0]", "critique[0].r1"
    template: str
    template_hash: str
    model: str
    key: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    cached: bool
    seconds: float


class Round(Typed):
    principle_id: str
    critique: str
    revision: str
    noop: bool  # the revision left the text unchanged


class Candidate(Typed):
    index: int
    answer: str
    finish_reason: str
    rounds: list[Round] = Field(default_factory=list)

    @property
    def final(self) -> str:
        return self.rounds[-1].revision if self.rounds else self.answer


class Drop(Typed):
    stage: str
    reason: str
    detail: str = ""


class Record(Typed):
    id: str  # the prompt id: a hash of the normalised prompt
    prompt: str
    source: Literal["seed", "generated", "file"]
    metadata: dict[str, Any] = Field(default_factory=dict)
    constitution: str | None = None  # name@version:sha256 of the constitution that shaped it
    candidates: list[Candidate] = Field(default_factory=list)
    calls: list[CallRef] = Field(default_factory=list)
    dropped: Drop | None = None

    @classmethod
    def new(cls, prompt: str, source: str, **metadata: Any) -> Record:
        return cls(id=prompt_id(prompt), prompt=prompt.strip(), source=source, metadata=metadata)

    @property
    def principle_ids(self) -> list[str]:
        return [r.principle_id for c in self.candidates for r in c.rounds]


def normalise(text: str) -> str:
    """Case, spacing and edge punctuation do not make two prompts different."""
    return re.sub(r"\s+", " ", text).strip().strip("\"'.!?").lower()


def prompt_id(prompt: str) -> str:
    return hashlib.sha256(normalise(prompt).encode()).hexdigest()[:16]
