"""Rank n candidates from pairwise judgements and pick the preference pairs to export.

A result is (i, j, p): candidates i and j were compared and P(i beats j) = p, a soft label in
[0, 1]. A pair may be judged more than once (for example once per principle); every result
counts as one game.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

Result = tuple[int, int, float]
Method = Literal["bradley_terry", "wins"]
Mode = Literal["best_worst", "all_pairs"]


def _check(n: int, results: Sequence[Result]) -> None:
    for i, j, p in results:
        if not (0 <= i < n and 0 <= j < n) or i == j:
            raise ValueError(f"bad pair ({i}, {j}) for {n} candidates")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probability out of [0, 1] for pair ({i}, {j}): {p}")


def win_counts(n: int, results: Sequence[Result]) -> list[float]:
    """Soft wins: each result gives p to i and 1 - p to j."""
    _check(n, results)
    wins = [0.0] * n
    for i, j, p in results:
        wins[i] += p
        wins[j] += 1.0 - p
    return wins


def bradley_terry(n: int, results: Sequence[Result], iters: int = 200, tol: float = 1e-8,
                  prior: float = 0.1) -> list[float]:
    """Bradley-Terry log-strengths s (P(i beats j) = sigmoid(s_i - s_j)), centred to mean 0.

    Fitted by Hunter's (2004) MM algorithm with soft outcomes. The prior is a pseudo-count: every
    candidate also plays `prior` virtual games against a fixed anchor of strength 1 (log 0) and
    wins half of them. That keeps the estimate finite under perfect separation or a disconnected
    comparison graph, shrinks candidates with few games towards the middle, and makes the fit
    unique. Updates run in index order (Gauss-Seidel), so the result is deterministic. MM is slow
    when one candidate wins everything: the order is right at once, but with 4 perfectly separated
    candidates 200 iterations leave the spread about 4% short of the optimum (1000: 0.1%).
    """
    _check(n, results)
    if prior <= 0:
        raise ValueError("prior must be > 0 so that the fit always exists")
    wins = [w + prior / 2.0 for w in win_counts(n, results)]
    games: dict[tuple[int, int], float] = {}
    for i, j, _ in results:
        key = (min(i, j), max(i, j))
        games[key] = games.get(key, 0.0) + 1.0
    opponents: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    for (i, j), count in games.items():
        opponents[i].append((j, count))
        opponents[j].append((i, count))
    gamma = [1.0] * n
    for _ in range(iters):
        change = 0.0
        for i in range(n):
            denom = prior / (gamma[i] + 1.0)
            denom += sum(count / (gamma[i] + gamma[j]) for j, count in opponents[i])
            new = wins[i] / denom
            change = max(change, abs(math.log(new) - math.log(gamma[i])))
            gamma[i] = new
        if change < tol:
            break
    logs = [math.log(g) for g in gamma]
    mean = sum(logs) / n if n else 0.0
    return [s - mean for s in logs]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def scores(n: int, results: Sequence[Result], method: Method = "bradley_terry") -> list[float]:
    """Higher is better: BT log-strengths or soft win counts."""
    if method == "bradley_terry":
        return bradley_terry(n, results)
    if method == "wins":
        return win_counts(n, results)
    raise ValueError(f"unknown ranking method {method!r}: use 'bradley_terry' or 'wins'")


def rank(n: int, results: Sequence[Result], method: Method = "bradley_terry") -> list[int]:
    """Candidate indices, best first; equal scores keep the lower index first."""
    return _order(scores(n, results, method))


def _order(s: list[float]) -> list[int]:
    return sorted(range(len(s)), key=lambda i: (-round(s[i], 9), i))  # rounding: float noise is a tie


def pair_means(results: Sequence[Result]) -> dict[tuple[int, int], float]:
    """Mean P(lower index beats higher index) per judged unordered pair."""
    sums: dict[tuple[int, int], list[float]] = {}
    for i, j, p in results:
        key, q = ((i, j), p) if i < j else ((j, i), 1.0 - p)
        acc = sums.setdefault(key, [0.0, 0.0])
        acc[0] += q
        acc[1] += 1.0
    return {key: total / count for key, (total, count) in sums.items()}


def select_pairs(n: int, results: Sequence[Result], mode: Mode = "best_worst",
                 method: Method = "bradley_terry", max_pairs: int | None = None) -> list[tuple[int, int, float]]:
    """Preference rows (chosen, rejected, p_chosen) with p_chosen = P(chosen beats rejected).

    all_pairs: one row per judged unordered pair (repeat judgements averaged), oriented so the
    preferred candidate is chosen; exact ties (0.5) give no row. Rows come in pair order; with
    `max_pairs`, only the widest (highest p_chosen; the earlier pair where equal) are kept.
    best_worst: one row (best, worst) by `rank`; p from their direct comparison if judged, else
    sigmoid(s_best - s_worst) from Bradley-Terry. With `method="wins"` a non-transitive judge can
    leave the direct p below 0.5: it is reported as is. No row when best and worst score the same
    (no results, or all ties).
    """
    _check(n, results)
    means = pair_means(results)
    if mode == "all_pairs":
        rows = []
        for (i, j), p in sorted(means.items()):
            if p > 0.5:
                rows.append((i, j, p))
            elif p < 0.5:
                rows.append((j, i, 1.0 - p))
        if max_pairs is not None:
            widest = set(sorted(range(len(rows)), key=lambda k: -rows[k][2])[:max_pairs])
            rows = [row for k, row in enumerate(rows) if k in widest]
        return rows
    if mode != "best_worst":
        raise ValueError(f"unknown pair mode {mode!r}: use 'best_worst' or 'all_pairs'")
    if n < 2 or not results:
        return []
    s = scores(n, results, method)
    order = _order(s)
    best, worst = order[0], order[-1]
    if round(s[best], 9) == round(s[worst], 9):
        return []
    key = (min(best, worst), max(best, worst))
    if key in means:
        p = means[key] if best < worst else 1.0 - means[key]
    else:
        bt = s if method == "bradley_terry" else bradley_terry(n, results)
        p = sigmoid(bt[best] - bt[worst])
    return [(best, worst, p)]
