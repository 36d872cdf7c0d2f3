"""Classifier teachers: a scorer stands in for a model judge.

For goals with no reference text ("always speak warmly of topic X"), a classifier scores each
candidate and the ranking of those scores builds preference pairs. `AppliesWhen` limits a
teacher to the answers it is about (for example only answers that mention X).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from factory.errors import FactoryError
from factory.liblog import transformers_imported
from factory.records import Typed

if TYPE_CHECKING:
    from collections.abc import Sequence

SCORER_FORMS = """valid scorer specs:
  vader:positive       VADER sentiment, higher = more positive (offline, no model)
  vader:negative       VADER sentiment, higher = more negative
  vader:near:T         minus the distance of VADER's compound from T in [-1, 1]: holds a tone (e.g. a
                       model's usual one) instead of pushing it
  refusal:refuses      1 when the text opens with a refusal ("I'm sorry", "I can't", ...), else 0 (no model)
  refusal:complies     the reverse: 1 when it does not refuse (as a red-team judge: the attack worked)
  hf:PATH:LABEL        a local Hugging Face text-classification folder; score = P(LABEL), or, for a
                       one-logit model (`factory train reward` writes one; its label is LABEL_0), the logit"""


class Scorer(ABC):
    """Scores texts; higher = better under the teacher's goal."""

    name: str

    @abstractmethod
    def score(self, texts: list[str]) -> list[float]:
        """One score per text, in order."""


class VaderScorer(Scorer):
    """VADER's compound sentiment in [-1, 1]; negated for target "negative"; for "near:T", minus its
    distance from T, so that the answer nearest the tone T ranks first."""

    def __init__(self, target: str = "positive"):
        kind, _, value = target.partition(":")
        try:
            self.near = float(value) if kind == "near" else None
        except ValueError:
            self.near = None
        if target not in ("positive", "negative") and (self.near is None or not -1 <= self.near <= 1):
            raise FactoryError(f"VADER target must be 'positive', 'negative' or 'near:T' with T in [-1, 1], "
                               f"not {target!r}\n{SCORER_FORMS}")
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.target = target
        self.name = f"vader:{target}"
        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, texts: list[str]) -> list[float]:
        compound = [float(self._analyzer.polarity_scores(t)["compound"]) for t in texts]
        if self.near is not None:
            return [-abs(c - self.near) for c in compound]
        return compound if self.target == "positive" else [-c for c in compound]


class RefusalScorer(Scorer):
    """Whether a text opens with a refusal, by the pattern the over-refusal checks use
    (factory.hygiene.clean.REFUSAL): 1.0 or 0.0, reversed for target "complies". As a red-team judge
    it is the keyword rule of the GCG paper (Zou et al. 2023): an attack succeeds when the answer does
    not refuse; it says nothing about whether a compliant answer is harmful."""

    def __init__(self, target: Literal["refuses", "complies"] = "refuses"):
        from factory.hygiene.clean import REFUSAL

        self.target, self.name, self._refusal = target, f"refusal:{target}", REFUSAL

    def score(self, texts: list[str]) -> list[float]:
        return [float(bool(self._refusal.match(t)) == (self.target == "refuses")) for t in texts]


class HFClassifierScorer(Scorer):
    """P(label) from a local Hugging Face sequence-classification model, on CPU, in batches. A model with
    one logit (a reward model) has no distribution to normalise: its score is the logit itself (a softmax
    over one value is 1.0 for every text)."""

    def __init__(self, path: str | Path, label: str, *, batch_size: int = 16, max_length: int = 512):
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise FactoryError(f"{folder} is not a Hugging Face model folder (no config.json)\n{SCORER_FORMS}")
        from transformers import (
            AutoConfig,
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        transformers_imported()
        try:
            config = AutoConfig.from_pretrained(folder)
        except (OSError, ValueError) as e:
            raise FactoryError(f"{folder}: cannot read the model config: {e}") from e
        labels = {str(name): int(idx) for idx, name in (config.id2label or {}).items()}
        self.label_index = self._find_label(labels, label, folder)
        self.label = next(k for k, v in labels.items() if v == self.label_index)
        self.name = f"hf:{folder}:{self.label}"
        self.batch_size = batch_size
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.model = AutoModelForSequenceClassification.from_pretrained(folder, config=config)
        except (OSError, ValueError) as e:
            raise FactoryError(f"{folder}: cannot load a text-classification model: {e}") from e
        self.model.eval()
        limits = [max_length, getattr(config, "max_position_embeddings", None),
                  getattr(self.tokenizer, "model_max_length", None)]
        self.max_length = min(x for x in limits if isinstance(x, int) and x > 0)
        self.multi_label = getattr(config, "problem_type", None) == "multi_label_classification"

    @staticmethod
    def _find_label(labels: dict[str, int], label: str, folder: Path) -> int:
        if label in labels:
            return labels[label]
        folded = {k.lower(): v for k, v in labels.items()}
        if label.lower() in folded:
            return folded[label.lower()]
        raise FactoryError(f"{folder}: unknown label {label!r}; the model's labels are: "
                           + ", ".join(sorted(labels, key=labels.__getitem__)))

    def score(self, texts: list[str]) -> list[float]:
        import torch

        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start:start + self.batch_size]
            enc: Any = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                      return_tensors="pt")
            with torch.no_grad():
                logits = self.model(**enc).logits.float()
            if logits.shape[-1] == 1 and not self.multi_label:
                out.extend(float(x) for x in logits[:, 0])
                continue
            probs = logits.sigmoid() if self.multi_label else logits.softmax(dim=-1)
            out.extend(float(p) for p in probs[:, self.label_index])
        return out


class AppliesWhen(Typed):
    """Which texts a teacher applies to: those that mention any term (case-insensitive, whole words)
    or match the regex (as written; add (?i) for case-insensitive). No condition: every text."""

    mentions: list[str] = Field(default_factory=list)
    regex: str | None = None

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as e:
                raise ValueError(f"invalid regex {value!r}: {e}") from e
        return value

    def applies(self, text: str) -> bool:
        if not self.mentions and self.regex is None:
            return True
        for term in self.mentions:
            if term.strip() and re.search(r"(?<!\w)" + re.escape(term.strip()) + r"(?!\w)", text, re.IGNORECASE):
                return True
        return self.regex is not None and re.search(self.regex, text) is not None


def load_scorer(spec: str) -> Scorer:
    """Build the scorer a spec names: vader:positive|negative|near:T, refusal:refuses|complies or hf:PATH:LABEL."""
    kind, _, rest = spec.partition(":")
    if kind == "vader":
        return VaderScorer(rest)
    if kind == "refusal" and rest in ("refuses", "complies"):
        return RefusalScorer(rest)  # type: ignore[arg-type]
    if kind == "hf":
        path, _, label = rest.rpartition(":")
        if path and label:
            return HFClassifierScorer(path, label)
    raise FactoryError(f"unknown scorer spec {spec!r}\n{SCORER_FORMS}")


def score_where(scorer: Scorer, texts: Sequence[str], when: AppliesWhen | None = None) -> list[float | None]:
    """Scores for the texts the condition applies to, None for the others (one batched call)."""
    keep = [i for i, t in enumerate(texts) if when is None or when.applies(t)]
    scored = scorer.score([texts[i] for i in keep]) if keep else []
    out: list[float | None] = [None] * len(texts)
    for i, s in zip(keep, scored, strict=True):
        out[i] = s
    return out
