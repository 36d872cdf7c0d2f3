"""The rollouts as data: every sample the policy wrote, with its prompt, step, each reward term, the
total and the advantage, as the `rollouts` config of the output folder (Parquet, with a card), and
the fixed prompts answered at the start, middle and end of training (report_samples.jsonl)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback

from factory.yamlfile import jsonl_lines

ROLLOUTS = "rollouts"
SAMPLES = "report_samples.jsonl"


def distinct_2(texts: list[str]) -> float | None:
    """Distinct word bigrams over all bigrams of the texts (diversity of what a model writes)."""
    grams = [tuple(w[i:i + 2]) for w in (t.split() for t in texts) for i in range(len(w) - 1)]
    return round(len(set(grams)) / len(grams), 4) if grams else None


class RolloutSink:
    """Rows buffered per generation round, written as one Parquet file per flush (before each
    checkpoint and at the end) under OUT/rollouts/, named by the run's id and their first and last
    step. (The id: `datasets` caches a folder's config by the folder's name and the data files'
    names, so two runs into folders both called `out` would otherwise load each other's rows.)"""

    def __init__(self, out: Path, names: list[str], weights: list[float], run_id: str):
        self.folder, self.names, self.weights, self.run_id = out / ROLLOUTS, names, weights, run_id
        self.rows: list[dict] = []
        self.total_rows = self.count()

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("train-*.parquet")) if self.folder.is_dir() else []

    def count(self) -> int:
        import pyarrow.parquet as pq

        return sum(pq.read_metadata(f).num_rows for f in self.files())

    def add(self, step: int, prompts: list, completions: list, rewards: dict[str, list[float]],
            advantages: list[float], degenerate_flags: list[bool], lengths: list[int]) -> None:
        from factory.train.rewards import text_of

        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            terms = {n: _num(rewards[n][i]) for n in self.names}
            scored = [(w, v) for w, v in zip(self.weights, terms.values(), strict=True) if v is not None]
            self.rows.append({"step": step, "prompt": _prompt_text(prompt), "completion": text_of(completion),
                              **{f"reward_{n}": v for n, v in terms.items()},
                              "total": round(sum(w * v for w, v in scored), 6) if scored else None,
                              "advantage": _num(advantages[i]), "completion_tokens": lengths[i],
                              "degenerate": degenerate_flags[i]})

    def flush(self) -> None:
        if not self.rows:
            return
        from datasets import Dataset

        self.folder.mkdir(parents=True, exist_ok=True)
        first, last = self.rows[0]["step"], self.rows[-1]["step"]
        name = f"train-{self.run_id}-{first:06d}-{last:06d}.parquet"
        tmp = self.folder / f".{name}.tmp"
        Dataset.from_list(self.rows).to_parquet(str(tmp))
        tmp.replace(self.folder / name)  # whole files only
        self.total_rows += len(self.rows)
        self.rows = []

    def truncate(self, step: int) -> None:
        """Resuming from the checkpoint at STEP: samples generated at STEP or later are made again."""
        for f in self.files():
            if int(f.stem.split("-")[2]) >= step:
                f.unlink()
        self.total_rows = self.count()


def _num(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 6)


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content") or "" for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def write_card(out: Path, objective: str, names: list[str], weights: list[float], rows: int, model: str,
               run_id: str) -> None:
    """OUT/README.md: the `rollouts` config (so `load_dataset(OUT, "rollouts")` works) and what it holds.
    The data files' pattern names the run: `datasets` caches by folder name, config and pattern."""
    terms = "\n".join(f"| `reward_{n}` | {w:g} |" for n, w in zip(names, weights, strict=True))
    text = f"""---
configs:
- config_name: {ROLLOUTS}
  data_files:
  - split: train
    path: {ROLLOUTS}/train-{run_id}-*.parquet
tags:
- constitution-factory
- {objective}
- rollouts
---
# Rollouts of `factory train {objective}`

Every sample the policy ({model}) wrote during training, scored by the reward terms: {rows} rows.

```python
from datasets import load_dataset
rollouts = load_dataset("{out}", "{ROLLOUTS}", split="train")
```

| column | meaning |
|---|---|
| `step` | optimiser steps done when the sample was generated |
| `prompt` | the user prompt |
| `completion` | the sample |
| `reward_<term>` | each term's value (null: the term could not score it) |
| `total` | the weighted sum of the terms that scored it |
| `advantage` | the advantage the trainer used for it |
| `completion_tokens` | its length in tokens |
| `degenerate` | empty, or a repeated-token run |

| term | weight |
|---|---|
{terms}
"""
    tmp = out / "README.md.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out / "README.md")


class SampleCallback(TrainerCallback):
    """Greedy answers to fixed prompts at the start, the middle and the end of training (report.html)."""

    def __init__(self, path: Path | None, prompts: list[list[dict]], tokenizer, max_new_tokens: int):
        self.path, self.prompts, self.tokenizer, self.max_new_tokens = path, prompts, tokenizer, max_new_tokens
        self.done: set[int] = set()
        if path is not None and path.is_file():
            self.done = {json.loads(line)["step"] for _, line in jsonl_lines(path.read_text())}

    def _sample(self, model, step: int) -> None:
        if self.path is None or not self.prompts or step in self.done:
            return
        import torch

        self.done.add(step)
        was_training = model.training
        model.eval()
        rows = []
        with torch.no_grad():
            for messages in self.prompts:
                ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                         return_dict=True).to(model.device)
                out = model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False,
                                     pad_token_id=self.tokenizer.pad_token_id)
                answer = self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
                rows.append({"step": step, "prompt": _prompt_text(messages), "answer": answer.strip()})
        if was_training:
            model.train()
        with self.path.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and state.global_step == 0:
            self._sample(model, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and state.global_step in (state.max_steps // 2, state.max_steps):
            self._sample(model, state.global_step)
