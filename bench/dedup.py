"""Hygiene throughput and accuracy on synthetic text: exact dedup, MinHash LSH near dedup (rensa),
decontamination and the quality filters.

    python bench/dedup.py [--n 100000] [--words 100] [--near 0.05] [--exact 0.05] [--evals 1000]
                          [--threshold 0.8] [--dedup-only]

Texts draw words from a Zipf-like vocabulary (so common 5-grams do recur across unrelated texts).
Planted: exact copies (case, spacing and edge punctuation changed), near copies (1 to 3 words
replaced; 100 words give a true 5-gram Jaccard of about 0.90 / 0.81 / 0.73, so with the default
0.8 threshold the 3-word copies are mostly, and rightly, kept), and answers that quote 13 words
(must match) or 12 words (must not) of an eval text. Texts are shuffled, so a copy may come before
its source. Near dedup runs on the texts that exact dedup kept, as a pipeline would. A flagged
text counts as correct when it and the text it was folded into come from the same planted group.
Prints seconds, rows per second (wall clock, and CPU seconds as a check on a busy machine), peak
RSS, recall and precision.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import time
from pathlib import Path
from typing import Self

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from factory.hygiene import Decontaminator, NearDedup, check, exact_duplicates


def vocabulary(rng: np.random.Generator, size: int = 50_000) -> tuple[np.ndarray, np.ndarray]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = np.unique(["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(size)])
    p = 1.0 / np.arange(1, len(vocab) + 1)
    return vocab, p / p.sum()


def make_corpus(args: argparse.Namespace) -> tuple[list[str], np.ndarray, np.ndarray, list[str], dict]:
    rng, prng = np.random.default_rng(args.seed), random.Random(args.seed)
    vocab, p = vocabulary(rng)
    n_exact, n_near = int(args.n * args.exact), int(args.n * args.near)
    n_base = args.n - n_exact - n_near
    words = vocab.tolist()
    rows = []
    for s in range(0, n_base, 10_000):  # in blocks: keeps the generator's own memory small
        ids = rng.choice(len(words), size=(min(10_000, n_base - s), args.words), p=p).tolist()
        rows.extend(" ".join([words[j] for j in r]) for r in ids)
    group = list(range(n_base))
    edits = [0] * n_base  # 0: original, -1: exact copy, k: near copy with k words replaced
    for _ in range(n_exact):
        src = prng.randrange(n_base)
        rows.append("  " + rows[src].upper().replace(" ", "  ", 3) + " !")
        group.append(src), edits.append(-1)
    for _ in range(n_near):
        src, k = prng.randrange(n_base), prng.randint(1, 3)
        toks = rows[src].split()
        for pos in prng.sample(range(len(toks)), k):
            toks[pos] = "zz" + vocab[prng.randrange(len(vocab))]
        rows.append(" ".join(toks))
        group.append(src), edits.append(k)
    evals = [" ".join(r) for r in vocab[rng.choice(len(vocab), size=(args.evals, 60), p=p)]]
    contam: dict[int, int] = {}  # text index -> words quoted from an eval text (13 or 12)
    uncopied = sorted(set(range(n_base)) - set(group[n_base:]))  # so copies stay exact / near copies
    for i in prng.sample(uncopied, int(args.n * 0.01)):
        quote_len = 13 if prng.random() < 0.5 else 12
        ev = evals[prng.randrange(args.evals)].split()
        at = prng.randrange(len(ev) - quote_len)
        rows[i] = f"{rows[i]} qqq {' '.join(ev[at:at + quote_len])} qqq"  # qqq: not in vocab
        contam[i] = quote_len
    order = rng.permutation(len(rows))
    inverse = np.argsort(order)
    texts = [rows[i] for i in order]
    contam = {int(inverse[i]): q for i, q in contam.items()}
    return texts, np.asarray(group)[order], np.asarray(edits)[order], evals, contam


def score(dups: list[int | None], group: np.ndarray, planted: np.ndarray) -> tuple[float, float]:
    """Recall over planted copies (folded into a text of their group), precision over flagged texts."""
    flagged = np.array([d is not None for d in dups])
    target = np.array([i if d is None else d for i, d in enumerate(dups)])
    right = flagged & (group[target] == group)
    # A planted copy is found when it shares a cluster with its group: flagged itself, or its
    # source (which may come later after shuffling) was folded into it.
    found = right.copy()
    found[target[right]] = True
    recall = found[planted].mean() if planted.any() else float("nan")
    return float(recall), float(right.sum() / max(flagged.sum(), 1))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Timer:
    """Wall and CPU seconds (CPU counts every thread of the process, rensa's included)."""

    def __enter__(self) -> Self:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--words", type=int, default=100)
    ap.add_argument("--near", type=float, default=0.05)
    ap.add_argument("--exact", type=float, default=0.05)
    ap.add_argument("--evals", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=NearDedup().threshold)
    ap.add_argument("--dedup-only", action="store_true", help="skip decontamination and the filters")
    args = ap.parse_args()

    t = time.perf_counter()
    texts, group, edits, evals, contam = make_corpus(args)
    print(f"corpus: {len(texts):,} texts x {args.words} words in {time.perf_counter() - t:.1f} s, "
          f"RSS {rss_mb():.0f} MB (peak {peak_rss_mb():.0f} MB)")
    with Timer() as te:
        exact = exact_duplicates(texts)
    r, p = score(exact, group, edits < 0)
    print(f"exact:    {te.wall:6.2f} s  {len(texts) / te.wall:9,.0f} rows/s  (CPU {te.cpu:.2f} s)  flagged "
          f"{sum(d is not None for d in exact):,}  recall {r:.3f}  precision {p:.3f}  peak RSS {peak_rss_mb():.0f} MB")

    keep = [i for i, d in enumerate(exact) if d is None]
    kept = [texts[i] for i in keep]
    nd = NearDedup(threshold=args.threshold)
    before = rss_mb()
    with Timer() as tn:
        clusters = nd.clusters(kept)
    near_local: list[int | None] = [None] * len(kept)
    for c in clusters:
        for j in c[1:]:
            near_local[j] = c[0]
    sub_group, sub_edits = group[keep], edits[keep]
    r, p = score(near_local, sub_group, sub_edits > 0)
    print(f"near:     {tn.wall:6.2f} s  {len(kept) / tn.wall:9,.0f} rows/s  (CPU {tn.cpu:.2f} s)  flagged "
          f"{sum(d is not None for d in near_local):,} in {len(clusters):,} clusters  recall {r:.3f}  precision "
          f"{p:.3f}  peak RSS {peak_rss_mb():.0f} MB (was {before:.0f} MB before)")
    print(f"          {len(kept):,} texts, rensa RMinHash {nd.num_perm} slots, LSH {nd.bands}x{nd.rows} bands, "
          f"{nd.ngram}-gram shingles, threshold {nd.threshold}")
    for k in (1, 2, 3):
        rk, _ = score(near_local, sub_group, sub_edits == k)
        print(f"          {k} word(s) replaced (J ~ {jaccard_of(k, args.words):.2f}): recall {rk:.3f}")
    with Timer() as ts:
        nd.minhashes(kept)
    print(f"          for reference, signatures alone (words, shingles, rensa MinHash; timed apart): "
          f"{ts.wall:.2f} s, {len(kept) / ts.wall:,.0f} rows/s")
    total = te.wall + tn.wall
    print(f"total:    {total:6.2f} s  {len(texts) / total:9,.0f} rows/s  (exact on {len(texts):,} rows, then near "
          f"on {len(kept):,})")
    if args.dedup_only:
        print(f"peak RSS {peak_rss_mb():.0f} MB")
        return

    t = time.perf_counter()
    d = Decontaminator.from_texts(evals, name="bench-eval")
    t_build = time.perf_counter() - t
    t = time.perf_counter()
    hits = d.match_many(texts)
    t_match = time.perf_counter() - t
    hit = np.array([h is not None for h in hits])
    q13 = np.array([contam.get(i) == 13 for i in range(len(texts))])
    q12 = np.array([contam.get(i) == 12 for i in range(len(texts))])
    print(f"decontam: {t_build + t_match:6.2f} s  (build {t_build:.2f} s for {len(d):,} 13-grams, match "
          f"{t_match:.2f} s)  13-word quotes found {hit[q13].mean():.3f}  12-word quotes flagged "
          f"{hit[q12].mean():.3f}  other texts flagged {hit[~q13 & ~q12].mean():.4f}")

    t = time.perf_counter()
    reasons = [check(x) for x in texts]
    print(f"filters:  {time.perf_counter() - t:6.2f} s  failing {sum(r is not None for r in reasons):,}")
    print(f"peak RSS {peak_rss_mb():.0f} MB")


def jaccard_of(edited: int, n: int, ngram: int = 5) -> float:
    """Expected 5-gram Jaccard after replacing `edited` scattered words (edits far apart)."""
    changed = min(edited * ngram, n - ngram + 1)
    same = n - ngram + 1 - changed
    return same / (same + 2 * changed)


if __name__ == "__main__":
    main()
