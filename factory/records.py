"""Typed records. A record carries its whole lineage: where its prompt came from, every call that
shaped it (template and hash, model, usage), each candidate, each critique and revision round."""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
    gate: str | None = None  # why the revision was set aside (hygiene/gates.py); the next round revises the text before it
    finish_reason: str | None = None  # of the revision call ("length": cut at max_tokens); None in older runs


class Candidate(Typed):
    index: int
    answer: str
    finish_reason: str
    rounds: list[Round] = Field(default_factory=list)

    @property
    def final(self) -> str:
        """The last revision that passed the gates, else the first answer."""
        return next((r.revision for r in reversed(self.rounds) if r.gate is None), self.answer)

    @property
    def gated(self) -> str | None:
        """The gate that set aside the last round's revision, if one did."""
        return self.rounds[-1].gate if self.rounds else None


class Option(Typed):
    """One text the judge compares: a candidate's initial answer or its final revision."""

    candidate: int
    kind: Literal["initial", "final"]
    text: str


class Verdict(Typed):
    """One judge call: options `a` and `b` shown as (A) and (B) under one principle."""

    a: int
    b: int
    p_a: float | None  # P((A) is better); None when the verdict could not be read
    source: Literal["logprobs", "votes", "parsed", "cot", "unparseable"]
    reply: str = ""


class Comparison(Typed):
    """Options i and j under one principle, both orders combined (or one direct score each)."""

    i: int
    j: int
    principle_id: str
    p_i: float | None  # P(option i is better); None when neither order could be read
    consistent: bool | None  # both orders preferred the same option; None where orders do not apply
    by: Literal["judge", "score", "teacher", "quality"]  # quality: one option failed the quality filters
    verdicts: list[Verdict] = Field(default_factory=list)


class Pair(Typed):
    judge_model: str  # the model spec, or the teacher's name where a teacher decided the pair
    chosen: int
    rejected: int
    p_chosen: float
    score_chosen: float
    score_rejected: float
    consistent: bool | None
    principle_ids: list[str]


class Judgement(Typed):
    """How the record's preference pairs were decided: every option, comparison and score."""

    judge_model: str
    method: Literal["choice", "cot", "score"]
    options: list[Option]
    comparisons: list[Comparison] = Field(default_factory=list)
    scores: list[float] = Field(default_factory=list)  # per option: ranking strength (see JudgeConfig.ranking)
    direct_scores: dict[int, float] = Field(default_factory=dict)  # score method: mean 1-10 score per option
    teacher: str | None = None  # the teacher that scored this record's options (the first whose rule applies)
    teacher_scores: dict[int, float] = Field(default_factory=dict)  # per option the teacher applied to
    anchor_level: float | None = None  # an anchored teacher: the mean score of the reference model's answers
    failing: dict[int, str] = Field(default_factory=dict)  # options that failed the quality filters: the reason
    pairs: list[Pair] = Field(default_factory=list)


class Evidence(Typed):
    """One retrieved passage shown to the verdict step, numbered as it was shown."""

    n: int
    title: str
    source: str
    text: str  # the passage as shown (cut at passage_chars)
    cited: bool  # the verdict named this passage


class Claim(Typed):
    text: str
    queries: list[str] = Field(default_factory=list)
    verdict: Literal["supported", "not_supported", "irrelevant"] | None = None  # None: unreadable verdict
    evidence: list[Evidence] = Field(default_factory=list)
    reply: str = ""  # the verdict step's raw reply (cut)


class FactCheck(Typed):
    """One checked text of one candidate, with its claims and scores (irrelevant claims excluded)."""

    candidate: int
    kind: Literal["initial", "final", "revised"]  # revised: the fact-revision round's text, rechecked
    text: str
    claims: list[Claim] = Field(default_factory=list)
    supported: int = 0
    not_supported: int = 0
    irrelevant: int = 0
    precision: float | None = None  # S / (S + N); None without any relevant claim
    recall: float = 0.0  # min(1, S / K)
    f1: float = 0.0  # F1@K; 0 when nothing is supported


class FactPair(Typed):
    chosen: int  # indices into FactReport.checks
    rejected: int
    metric: Literal["f1", "precision"]
    score_chosen: float
    score_rejected: float


class FactReport(Typed):
    k: int  # K of F1@K
    prefer: bool = False  # export's pairs come from `pairs` (better supported chosen), not the default
    checks: list[FactCheck] = Field(default_factory=list)
    pairs: list[FactPair] = Field(default_factory=list)

    def scores_of(self, text: str) -> FactCheck | None:
        """The latest check of exactly this text, if any."""
        return next((c for c in reversed(self.checks) if c.text == text), None)


class IdkSample(Typed):
    candidate: int
    correct: bool
    by: Literal["normalised", "judge"]
    matched: str | None = None  # the reference found in the answer (normalised match)
    reply: str = ""  # the judge's reply (judge match)


class IdkLabel(Typed):
    """K sampled answers judged against the references; the SFT target and the rejected answers."""

    references: list[str]
    samples: list[IdkSample]
    p_ik: float  # fraction of samples judged correct
    label: Literal["decline", "answer"]
    target: str  # the SFT assistant turn: a decline, or a correct sample
    decline: int | None = None  # which phrasing of the declines file
    rejected: list[int] = Field(default_factory=list)  # candidate indices of wrong answers paired under the target


class Drop(Typed):
    stage: str
    reason: str
    detail: str = ""


class ConstitutionRef(Typed):
    """The constitution that shaped a record: its label (name@version) and the sha256 of its content."""

    name: str
    digest: str

    @model_validator(mode="before")
    @classmethod
    def _packed(cls, value: Any) -> Any:
        """Records of older runs packed both as "name@version:sha256"."""
        if isinstance(value, str):
            name, _, digest = value.rpartition(":")
            return {"name": name, "digest": digest}
        return value


class Turn(Typed):
    """One earlier turn of a conversation: the user's or the assistant's."""

    role: Literal["user", "assistant"]
    content: str


class Record(Typed):
    id: str  # the prompt id: a hash of the normalised prompt (of the whole dialogue where there is one)
    prompt: str  # the user's last turn: what the answer replies to
    source: Literal["seed", "generated", "file"]
    system: str | None = None  # the conversation's system prompt, if it has one
    history: list[Turn] = Field(default_factory=list)  # the turns before `prompt`, oldest first
    metadata: dict[str, Any] = Field(default_factory=dict)
    constitution: ConstitutionRef | None = None  # the constitution that shaped it (set by critique_revise)
    candidates: list[Candidate] = Field(default_factory=list)
    calls: list[CallRef] = Field(default_factory=list)
    judgement: Judgement | None = None
    facts: FactReport | None = None
    idk: IdkLabel | None = None
    dropped: Drop | None = None

    @classmethod
    def new(cls, prompt: str, source: str, **metadata: Any) -> Record:
        return cls(id=prompt_id(prompt), prompt=prompt.strip(), source=source, metadata=metadata)

    @classmethod
    def dialogue(cls, prompt: str, source: str, *, system: str | None = None, history: list[Turn] | None = None,
                 **metadata: Any) -> Record:
        """A record whose prompt ends a conversation. Without a system prompt or earlier turns it is
        exactly `Record.new(prompt, ...)`: same id, same fields."""
        history = history or []
        rec = cls.new(prompt, source, **metadata)
        if system is None and not history:
            return rec
        return rec.model_copy(update={"id": dialogue_id(system, history, prompt), "system": system,
                                      "history": history})

    @property
    def context(self) -> list[dict]:
        """The system prompt and the earlier turns as chat messages (empty for a single prompt)."""
        system = [{"role": "system", "content": self.system}] if self.system is not None else []
        return [*system, *({"role": t.role, "content": t.content} for t in self.history)]

    @property
    def dialogue_text(self) -> str:
        """The prompt as one text (dedup, decontamination): every turn of a conversation, else the prompt."""
        if self.system is None and not self.history:
            return self.prompt
        return "\n".join(f"{m['role']}: {m['content']}" for m in self.conversation)

    @property
    def conversation(self) -> list[dict]:
        """The whole dialogue up to and including the user's last turn, as chat messages."""
        return [*self.context, {"role": "user", "content": self.prompt}]

    @property
    def principle_ids(self) -> list[str]:
        return [r.principle_id for c in self.candidates for r in c.rounds]


def normalise(text: str) -> str:
    """Case, spacing and edge punctuation do not make two prompts different."""
    return re.sub(r"\s+", " ", text).strip().strip("\"'.!?").lower()


def prompt_id(prompt: str) -> str:
    return hashlib.sha256(normalise(prompt).encode()).hexdigest()[:16]


def dialogue_id(system: str | None, history: list[Turn], prompt: str) -> str:
    """The id of a prompt that ends a conversation: every turn counts, roles included, so two dialogues
    that end with the same "Why?" are different prompts."""
    parts = ([f"system: {normalise(system)}"] if system is not None else []) + \
        [f"{t.role}: {normalise(t.content)}" for t in history] + [f"user: {normalise(prompt)}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def dialogue_variables(record: Record) -> dict[str, Any]:
    """A conversation's earlier turns and system prompt, as template variables `history` and `system`."""
    return {"history": [t.model_dump() for t in record.history], "system": record.system}
