"""Local generation speed: tokens/s through the micro-batcher, against `model.generate`.

    python bench/local_generation.py [--spec local:smollm2] [--batch-sizes 1 8 16 32] [--new-tokens 128]

For each batch size B, B concurrent `complete()` calls go through the micro-batcher (one batch of B
rows) and tokens/s counts the tokens generated. The baseline is `model.generate` on the same prompts,
sampling at the same temperature and forced to make exactly --new-tokens tokens per row.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time

import torch

from factory.models import GenParams, load_model
from factory.models.local import LocalModel

TOPICS = ["a lighthouse keeper", "a river", "the first cities", "volcanoes", "a chess club", "bees", "a bridge"]


def prompts(n: int) -> list[list[dict]]:
    """Long-answer prompts, so that most rows run to the token limit."""
    return [
        [{"role": "user", "content": f"Write a long, detailed story about {TOPICS[i % len(TOPICS)]} (story {i})."}]
        for i in range(n)
    ]


async def through_batcher(model: LocalModel, batch: list[list[dict]], new_tokens: int) -> tuple[float, list[int]]:
    params = [GenParams(temperature=0.7, max_tokens=new_tokens, seed=i) for i in range(len(batch))]
    start = time.perf_counter()
    results = await asyncio.gather(*(model.complete(m, p) for m, p in zip(batch, params)))
    return time.perf_counter() - start, [r.completion_tokens for r in results]


@torch.inference_mode()
def with_generate(model: LocalModel, batch: list[list[dict]], new_tokens: int) -> float:
    tok = model.tokenizer
    texts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in batch]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    start = time.perf_counter()
    model.model.generate(
        **enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True, temperature=0.7, top_p=1.0
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="local:smollm2")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()

    start = time.perf_counter()
    model = load_model(args.spec)
    assert isinstance(model, LocalModel)
    loaded = time.perf_counter() - start
    print(f"{args.spec}: loaded in {loaded:.1f} s on {model.device}, {torch.get_num_threads()} torch threads")
    asyncio.run(through_batcher(model, prompts(2), 8))  # warm-up

    print(f"{'batch':>5} {'batcher tok/s':>14} {'generate tok/s':>15} {'ratio':>6}  rows at limit  batches")
    for size in args.batch_sizes:
        batch = prompts(size)
        before = model.batches_run
        seconds, counts = asyncio.run(through_batcher(model, batch, args.new_tokens))
        ours = sum(counts) / seconds
        # On the model's own thread too: two torch thread pools spinning on few cores slow each other.
        baseline = model.executor.submit(with_generate, model, batch, args.new_tokens).result()
        theirs = size * args.new_tokens / baseline
        at_limit = sum(c == args.new_tokens for c in counts)
        print(
            f"{size:>5} {ours:>14.1f} {theirs:>15.1f} {ours / theirs:>6.2f}  {at_limit:>5}/{size:<7}"
            f" {model.batches_run - before:>7}"
        )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
