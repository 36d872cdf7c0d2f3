"""The local BM25 search over the default corpus (10,033 Wikipedia summaries): index build time (cold,
into a temporary cache folder), load time (warm), query latency (median, p95) and recall@5 over
queries made from article titles (does the title's own article come back in the top 5?).

    python bench/search.py [--queries 200] [--k 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from factory.search.local import LocalSearch, default_corpus

T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


async def run_queries(backend: LocalSearch, queries: list[tuple[str, str]], k: int) -> tuple[list[float], float]:
    """Latencies (s) and recall@k: the fraction of queries whose own article is among the k hits."""
    latencies, found = [], 0
    for query, title in queries:
        start = time.perf_counter()
        hits = await backend.search(query, k)
        latencies.append(time.perf_counter() - start)
        found += title in {hit.title for hit in hits}
    return latencies, found / len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    titles = sorted(json.loads(default_corpus().read_text(encoding="utf-8")))
    sample = random.Random(args.seed).sample(titles, args.queries)
    with tempfile.TemporaryDirectory() as tmp:
        cold, build_s = timed(lambda: LocalSearch.load(cache_dir=Path(tmp)))
        warm, load_s = timed(lambda: LocalSearch.load(cache_dir=Path(tmp)))
        assert cold.built and not warm.built
        print(f"corpus: {len(titles)} articles -> {len(warm._passages)} passages")
        print(f"index build (cold): {build_s:.2f} s    load (warm): {load_s * 1000:.0f} ms")
        for label, queries in (("title", [(t, t) for t in sample]),
                               ("'What is <title>?'", [(f"What is {t}?", t) for t in sample])):
            latencies, recall = asyncio.run(run_queries(warm, queries, args.k))
            ms = sorted(x * 1000 for x in latencies)
            p95 = ms[min(len(ms) - 1, round(0.95 * len(ms)) - 1)]
            print(f"{len(queries)} {label} queries: median {statistics.median(ms):.2f} ms, p95 {p95:.2f} ms, "
                  f"recall@{args.k} {recall:.1%}")


if __name__ == "__main__":
    main()
