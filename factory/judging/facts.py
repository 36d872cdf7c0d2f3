"""Fact checking, the pure parts: reading claim lists, queries and verdicts out of model text, and
scoring an answer's claims (SAFE): P = S / (S + N), R = min(1, S / K), F1@K = 2PR / (P + R).
Irrelevant claims and claims whose verdict could not be read count in neither S nor N."""

from __future__ import annotations

import re
from typing import Literal

from factory.errors import ParseError
from factory.records import Claim, FactCheck

Label = Literal["supported", "not_supported", "irrelevant"]

_ITEM = re.compile(r"^\s*(?:[-*\u2022\u2023+]|\(?\d{1,2}[.):]|claim\s*\d*\s*[:.)-])\s*(.*\S)\s*$", re.IGNORECASE)
_LABEL_PREFIX = re.compile(r"^(?:(?:the\s+)?claims?(?:\s+is)?|query|queries|search)\s*\d*\s*[:.)-]\s*", re.IGNORECASE)
_NONE = re.compile(r"^\W*(?:none|no(?:thing| factual)?(?: claims?| facts?)?|n/?a)\W*$", re.IGNORECASE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")
_VERDICT = re.compile(r"\b(not[\s_-]+supported|unsupported|irrelevant|supported)\b", re.IGNORECASE)
MIN_CLAIM_WORDS = 3


def _clean(item: str) -> str:
    item = _LABEL_PREFIX.sub("", item.strip())
    return item.strip().strip("\"'`").strip()


def parse_claims(text: str, limit: int) -> list[str]:
    """Claims from a bulleted or numbered list; with no list markers, the sentences of the text.
    'None' (or an equivalent) is no claims. Fragments under MIN_CLAIM_WORDS words are skipped.
    ParseError for an empty output or one with no usable claim."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        raise ParseError("empty output: expected a list of claims, or 'None'")
    if all(_NONE.match(line) for line in lines):
        return []
    marked = [m.group(1) for line in lines if (m := _ITEM.match(line))]
    items = marked or [s for line in lines if not line.endswith(":") for s in _SENTENCE.split(line)]
    claims: list[str] = []
    for item in map(_clean, items):
        if len(item.split()) >= MIN_CLAIM_WORDS and not _NONE.match(item) and item not in claims:
            claims.append(item)
    if not claims:
        raise ParseError(f"no claim of {MIN_CLAIM_WORDS}+ words in {len(lines)} line(s)")
    return claims[:limit]


def parse_queries(text: str, n: int) -> list[str]:
    """Up to n distinct search queries, one per line (markers, labels and quotes removed). Never
    fails: an empty list means the caller falls back to the claim itself."""
    queries: list[str] = []
    for line in text.splitlines():
        m = _ITEM.match(line)
        query = _clean(m.group(1) if m else line)
        if len(query.split()) >= 2 and len(query) <= 300 and query.lower() not in {q.lower() for q in queries}:
            queries.append(query)
    return queries[:n]


def parse_verdict(text: str, passages: int) -> tuple[Label, list[int]]:
    """The first Supported / Not supported / Irrelevant in the reply, and the passage numbers
    (1..passages) written after it."""
    m = _VERDICT.search(text)
    if m is None:
        raise ParseError("no verdict: expected Supported, Not supported or Irrelevant")
    word = re.sub(r"[\s_-]+", " ", m.group(1).lower())
    label: Label = "supported" if word == "supported" else "irrelevant" if word == "irrelevant" else "not_supported"
    cited = sorted({int(n) for n in re.findall(r"\d+", text[m.end():m.end() + 80]) if 1 <= int(n) <= passages})
    return label, cited


def score(check: FactCheck, k: int) -> FactCheck:
    """Fill S, N, I, precision, recall and F1@K from the claims' verdicts (in place, returned)."""
    verdicts = [c.verdict for c in check.claims]
    s, n = verdicts.count("supported"), verdicts.count("not_supported")
    check.supported, check.not_supported, check.irrelevant = s, n, verdicts.count("irrelevant")
    check.precision = round(s / (s + n), 6) if s + n else None
    check.recall = round(min(1.0, s / k), 6)
    p, r = check.precision or 0.0, check.recall
    check.f1 = round(2 * p * r / (p + r), 6) if s else 0.0
    return check


def metric_of(check: FactCheck, metric: Literal["f1", "precision"]) -> float:
    """The score drop_below and prefer compare; no relevant claim counts as precision 0."""
    return check.f1 if metric == "f1" else check.precision or 0.0


def unsupported(check: FactCheck) -> list[Claim]:
    return [c for c in check.claims if c.verdict == "not_supported"]
