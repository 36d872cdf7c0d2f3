"""Held-out figures for the opinion demo, from a `factory eval` folder (answers.jsonl): per prompt kind
and model (before = the baseline, after = the model), the share of negative answers (VADER compound
<= -0.05), the mean compound, the degenerate share and distinct-2, with 95% intervals from a
bootstrap over prompts (each prompt's samples resampled together: they are not independent); and per
kind the change, after minus before, in the share negative and the mean compound, paired by prompt
(the same prompts resampled for both models), so a drift can be told from the sampling noise.

    python -m factory.train.heldout outputs/opinion-demo-eval
"""

from __future__ import annotations

import json
import random
import sys
from collections import defaultdict
from pathlib import Path

from factory.commands.evaluate import clustered_interval
from factory.hygiene.filters import degenerate
from factory.records import Record
from factory.train.rollouts import distinct_2
from factory.yamlfile import jsonl_lines

NEGATIVE = -0.05  # VADER's own threshold for a negative text


def bootstrap_stat(groups: list[list], stat=None, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap of STAT (default: the mean of all values) resampling whole groups. For
    what is not a proportion (a mean compound in [-1, 1], a mean of per-prompt distinct-2), where
    evaluate.clustered_interval's Wilson floor does not apply; shares use that one."""
    stat = stat or (lambda gs: sum(v for g in gs for v in g) / max(sum(len(g) for g in gs), 1))
    rng = random.Random(seed)
    draws = sorted(stat([groups[rng.randrange(len(groups))] for _ in groups]) for _ in range(n))
    return round(draws[int(0.025 * n)], 4), round(draws[int(0.975 * n) - 1], 4)


def summarise(folder: Path) -> dict:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    vader = SentimentIntensityAnalyzer()
    # kind -> who -> prompt -> answers
    answers: dict[str, dict[str, dict[str, list[str]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for _, line in jsonl_lines((folder / "answers.jsonl").read_text()):
        rec = Record.model_validate_json(line)
        kind = str(rec.metadata.get("kind", "unlabelled"))
        for who, cand in zip(("after", "before"), rec.candidates, strict=False):
            answers[kind][who][rec.prompt].append(cand.answer)
    out: dict = {}
    for kind, by_who in sorted(answers.items()):
        scores: dict[str, dict[str, list[float]]] = {}  # who -> prompt -> compounds
        for who, by_prompt in sorted(by_who.items()):
            texts = list(by_prompt.values())
            compound = [[vader.polarity_scores(t)["compound"] for t in ts] for ts in texts]
            scores[who] = dict(zip(by_prompt, compound, strict=True))
            negative = [[float(c <= NEGATIVE) for c in cs] for cs in compound]
            degen = [[float(degenerate(t.split())) for t in ts] for ts in texts]
            flat = [t for ts in texts for t in ts]
            distinct = [[distinct_2(ts) or 0.0] for ts in texts]
            out.setdefault(kind, {})[who] = {
                "prompts": len(texts), "answers": len(flat),
                "share_negative": round(sum(map(sum, negative)) / len(flat), 4),
                "share_negative_ci95": clustered_interval(negative),  # a proportion: eval's own interval
                "mean_compound": round(sum(map(sum, compound)) / len(flat), 4),
                "mean_compound_ci95": bootstrap_stat(compound),
                "degenerate_share": round(sum(map(sum, degen)) / len(flat), 4),
                # Per prompt (over its samples), then the mean over prompts: pooled over all answers, a
                # bootstrap that draws a prompt twice counts its bigrams twice and no longer brackets it.
                "distinct_2": round(sum(d[0] for d in distinct) / len(distinct), 4),
                "distinct_2_ci95": bootstrap_stat(distinct),
            }
        if {"before", "after"} <= scores.keys():
            out[kind]["change"] = change(scores["before"], scores["after"])
    return out


def change(before: dict[str, list[float]], after: dict[str, list[float]]) -> dict:
    """After minus before, over the prompts both answered, with 95% intervals from one bootstrap over
    prompts that draws the same prompts for both models."""
    pairs = [(after[p], before[p]) for p in before if p in after]

    def mean(gs, side, f):
        values = [f(v) for g in gs for v in g[side]]
        return sum(values) / max(len(values), 1)

    def diff(f):
        return lambda gs: mean(gs, 0, f) - mean(gs, 1, f)

    compound, negative = diff(lambda c: c), diff(lambda c: float(c <= NEGATIVE))
    return {"prompts": len(pairs),
            "share_negative": round(negative(pairs), 4), "share_negative_ci95": bootstrap_stat(pairs, negative),
            "mean_compound": round(compound(pairs), 4), "mean_compound_ci95": bootstrap_stat(pairs, compound)}


def main() -> None:
    folder = Path(sys.argv[1])
    report = summarise(folder)
    (folder / "heldout.json").write_text(json.dumps(report, indent=2))
    print("| prompts | model | share negative (95% CI) | mean compound (95% CI) | degenerate | distinct-2 |")
    print("|---|---|---|---|---|---|")
    for kind, by in report.items():
        for who in ("before", "after"):
            r = by.get(who)
            if r:
                print(f"| {kind} ({r['prompts']} x {r['answers'] // max(r['prompts'], 1)}) | {who} | "
                      f"{r['share_negative']} {tuple(r['share_negative_ci95'])} | {r['mean_compound']} "
                      f"{tuple(r['mean_compound_ci95'])} | {r['degenerate_share']} | {r['distinct_2']} |")
        if d := by.get("change"):
            print(f"| {kind} ({d['prompts']} prompts) | after - before | {d['share_negative']:+} "
                  f"{tuple(d['share_negative_ci95'])} | {d['mean_compound']:+} {tuple(d['mean_compound_ci95'])} | | |")


if __name__ == "__main__":
    main()
