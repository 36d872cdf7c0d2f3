"""Soft preference labels from a judge's first-token log-probs, or from sampled verdicts.

The judge sees a multiple-choice question that ends with "Verdict: (" and we read the
log-probs of "A" and "B" as the next token. All functions here are pure and never raise on a
poor judge: they return None when there is nothing to read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping


def token_logprob(logprobs: Mapping[str, float], token: str) -> float | None:
    """log P(token), merging spellings that differ only in surrounding spaces ("A" and " A" are
    different tokens that both mean A: their probabilities add). NaN entries count as missing."""
    values = [v for k, v in logprobs.items() if k.strip() == token and not math.isnan(v)]
    if not values:
        return None
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def choice_probability(logprobs: Mapping[str, float] | None, a: str = "A", b: str = "B") -> float | None:
    """Normalised P(a) = e^la / (e^la + e^lb) from first-token log-probs.

    When only one side was scored (an API's top-k list left the other out), the absent token can
    hold at most the remaining mass 1 - p. If the present token is confident (p > 0.5) its side
    surely wins and p itself is returned (for a) or 1 - p (for b): a lower bound on the confidence,
    never an overclaim. If it is not confident (p <= 0.5) the direction is unknown: None.
    Returns None when neither side is present or both have probability 0.
    """
    if not logprobs:
        return None
    la, lb = token_logprob(logprobs, a), token_logprob(logprobs, b)
    if la is None and lb is None:
        return None
    if la is None or lb is None:
        p = math.exp(la if la is not None else lb)  # type: ignore[arg-type]
        if p <= 0.5:
            return None
        return p if la is not None else 1.0 - p
    if la == -math.inf and lb == -math.inf:
        return None
    top = max(la, lb)
    ea, eb = math.exp(la - top), math.exp(lb - top)
    return ea / (ea + eb)


def combine_orders(p_first_order: float, p_swapped: float) -> tuple[float, bool]:
    """Average the two presentation orders to cancel position bias, as in Google's RLAIF.

    Candidate X is shown as (A) in the first order and as (B) in the swapped one, so each argument
    is P(A) of its order. Returns (P(X better), position_consistent): the mean of p1 and 1 - p2,
    and whether both orders prefer the same candidate. Exactly 0.5 in either order is a tie and
    counts as inconsistent (MT-Bench counts an inconsistent pair as a tie).
    """
    for p in (p_first_order, p_swapped):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probability out of [0, 1]: {p}")
    q = 1.0 - p_swapped
    if p_first_order == 0.5 or q == 0.5:
        consistent = False
    else:
        consistent = (p_first_order > 0.5) == (q > 0.5)
    return (p_first_order + q) / 2.0, consistent


def clamp_cot(p: float, lo: float = 0.4, hi: float = 0.6) -> float:
    """Clamp a chain-of-thought label to [lo, hi]: with reasoning the judge is overconfident (CAI)."""
    return min(max(p, lo), hi)


def expected_score(logprobs: Mapping[str, float] | None, scale: Iterable[int] = range(1, 11)) -> float | None:
    """sum(i * P(i)) over the first-token probabilities of the scale's numbers, renormalised over
    the numbers the backend scored. None when none of them was scored.

    A score of 10 is one token ("10") for some tokenisers and two ("1", "0") for others, so a
    first-token "1" is ambiguous between 1 and 10. Rule: "10" counts as 10 only when the backend
    returned a "10" entry; a "1" always counts as 1. With a digit-splitting tokeniser this biases
    10s down to 1s: use a 0-9 or 1-9 scale with such judges.
    """
    if not logprobs:
        return None
    scored = [(i, lp) for i in scale if (lp := token_logprob(logprobs, str(i))) is not None]
    scored = [(i, lp) for i, lp in scored if lp > -math.inf]
    if not scored:
        return None
    top = max(lp for _, lp in scored)
    weights = [(i, math.exp(lp - top)) for i, lp in scored]
    total = sum(w for _, w in weights)
    return sum(i * w for i, w in weights) / total


def vote_probability(verdicts: Iterable[str | None]) -> float | None:
    """P(A) as the fraction of "A" among the parsed verdicts ("A" or "B"; others are ignored), for
    backends without log-probs that sample several verdicts. None when no verdict parsed."""
    parsed = [v for v in verdicts if v in ("A", "B")]
    if not parsed:
        return None
    return sum(v == "A" for v in parsed) / len(parsed)
