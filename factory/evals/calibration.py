"""Calibration of a probability against correctness: AUROC (how well it ranks right above wrong),
expected calibration error over equal-width bins, and the reliability bins to plot.

Hand-written: scikit-learn is not a dependency and these are a few lines each; AUROC is the
Mann-Whitney statistic with ties counted half."""

from __future__ import annotations

BINS = 10


def auroc(probs: list[float], correct: list[float]) -> float | None:
    """P(a random correct case gets a higher probability than a random wrong one); ties count half.
    `correct` may be fractions (the share of K samples right): each counts as that much positive
    and the rest negative. None when there are no positives or no negatives."""
    pos = [(p, w) for p, w in zip(probs, correct, strict=True) if w > 0]
    neg = [(p, 1 - w) for p, w in zip(probs, correct, strict=True) if w < 1]
    wp, wn = sum(w for _, w in pos), sum(w for _, w in neg)
    if wp == 0 or wn == 0:
        return None
    total = sum(wa * wb * (1.0 if a > b else 0.5 if a == b else 0.0) for a, wa in pos for b, wb in neg)
    return round(total / (wp * wn), 4)


def reliability(probs: list[float], correct: list[float], bins: int = BINS) -> list[dict]:
    """Per non-empty bin: its range, the mean probability, the mean correctness, the count."""
    out = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, p in enumerate(probs) if lo <= p < hi or (b == bins - 1 and p == 1.0)]
        if idx:
            out.append({"lo": lo, "hi": hi, "n": len(idx),
                        "confidence": round(sum(probs[i] for i in idx) / len(idx), 4),
                        "accuracy": round(sum(correct[i] for i in idx) / len(idx), 4)})
    return out


def ece(probs: list[float], correct: list[float], bins: int = BINS) -> float | None:
    """Expected calibration error: the count-weighted mean |accuracy - confidence| over the bins."""
    if not probs:
        return None
    return round(sum(b["n"] * abs(b["accuracy"] - b["confidence"]) for b in reliability(probs, correct, bins))
                 / len(probs), 4)


def calibration(probs: list[float | None], correct: list[float]) -> dict:
    pairs = [(p, c) for p, c in zip(probs, correct, strict=True) if p is not None]
    ps, cs = [p for p, _ in pairs], [c for _, c in pairs]
    return {"n": len(ps), "unreadable": len(probs) - len(ps), "auroc": auroc(ps, cs), "ece": ece(ps, cs),
            "mean_probability": round(sum(ps) / len(ps), 4) if ps else None,
            "mean_correct": round(sum(cs) / len(cs), 4) if cs else None, "bins": reliability(ps, cs)}
