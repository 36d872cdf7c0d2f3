"""Progress for training: a rich line per logging step (step, loss, learning rate, tokens per second)
and the same numbers as one JSON line each in metrics.jsonl. Only the main process prints or writes."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from rich.console import Console
from transformers import TrainerCallback


class ProgressCallback(TrainerCallback):
    def __init__(self, metrics_path: Path | None, console: Console):
        self.metrics_path, self.console = metrics_path, console
        self.start = self.last_time = 0.0
        self.last_tokens = 0
        self.tokens = 0  # non-padding tokens seen, all processes (TRL's `num_tokens`)
        self.rows: list[dict] = []  # what went into metrics.jsonl

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self.last_time = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True  # the last step is always a row, whatever logging_steps is
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs or not state.is_world_process_zero:
            return  # eval results and the final summary go to train_meta.json instead
        now = time.perf_counter()
        self.tokens = int(logs.get("num_tokens", self.tokens))
        rate = (self.tokens - self.last_tokens) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_tokens = now, self.tokens
        row = {"step": state.global_step, "loss": logs["loss"], "learning_rate": logs.get("learning_rate"),
               "tokens_per_s": round(rate, 1), "elapsed_s": round(now - self.start, 3)}
        row.update({k: v for k, v in logs.items() if k not in row and isinstance(v, int | float)})
        self.rows.append(row)
        if self.metrics_path is not None:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        total = f"/{state.max_steps}" if state.max_steps and state.max_steps > 0 else ""
        loss = row["loss"]
        shown = f"{loss:.4f}" if isinstance(loss, float) and math.isfinite(loss) else f"[red]{loss}[/red]"
        lr = f"{row['learning_rate']:.2e}" if row["learning_rate"] is not None else "-"
        self.console.print(f"step {state.global_step}{total}  loss {shown}  lr {lr}  {rate:,.0f} tok/s  "
                           f"{now - self.start:.1f}s", highlight=False)
