"""The training config: typed, with defaults per objective, overridable from a YAML file and flags.

Precedence: the objective's defaults, then the keys set in `--config FILE`, then the flags.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Objective = Literal["sft", "dpo", "reward", "kto"]
OBJECTIVES: tuple[Objective, ...] = ("sft", "dpo", "reward", "kto")
# The config each objective trains on (the export's names; splits are `train_<config>`, `test_<config>`).
DATA_CONFIG = {"sft": "sft", "dpo": "prefs", "reward": "reward", "kto": "kto"}


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    extends: str | None = Field(default=None, description="another training YAML (relative to this one) whose "
                                "keys this file starts from; a key set here replaces the base's whole value")
    learning_rate: float = Field(default=2e-5, gt=0, description="peak learning rate (default per objective, "
                                 "and 10x or more with LoRA)")
    batch_size: int = Field(default=8, ge=1, description="examples (or pairs) per device per step")
    grad_accum: int = Field(default=1, ge=1, description="gradient accumulation steps")
    max_steps: int = Field(default=-1, ge=-1, description="optimiser steps; -1 trains for `epochs`")
    epochs: float = Field(default=1.0, gt=0)
    max_length: int = Field(default=1024, ge=8, description="tokens per sequence (prompt + answer); longer is cut")
    warmup: float = Field(default=0.1, ge=0, description="warm-up: a fraction of the steps if < 1, else steps")
    scheduler: str = Field(default="linear", description="transformers lr_scheduler_type")
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    beta: float = Field(default=0.1, gt=0, description="DPO and KTO: strength of the pull toward the reference")
    reference: str | None = Field(default=None, description="DPO and KTO: the frozen reference, a local: spec "
                                  "(default: the starting model, --model); e.g. the base model in round N of "
                                  "iterated DPO, so drift from it costs in every round")
    template: str | None = Field(default=None, description="a prompt template file (prompts/*.yaml, relative to "
                                 "this YAML) that wraps each row's last user turn, system text included, as "
                                 "`factory run`, `factory train grpo` and `factory eval` send prompts with it, so "
                                 "the model learns in the format it is sampled in (default: rows as exported)")
    lora: bool = Field(default=False, description="train a LoRA adapter (merged into the saved model)")
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    lora_target_modules: list[str] | Literal["all-linear"] = Field(default="all-linear")
    gradient_checkpointing: bool = Field(default=True, description="recompute activations in the backward pass: "
                                        "about 30% less peak memory (SmolLM2-135M SFT: 4.8 GB, not 6.6)")
    precision: Literal["auto", "bf16", "fp32"] = Field(default="auto", description="auto: bf16 on CUDA, fp32 on CPU")
    seed: int = 0
    logging_steps: int = Field(default=10, ge=1, description="steps between log lines (and metrics.jsonl rows)")
    evaluate: bool = Field(default=True, description="evaluate on the test split at the end, when there is one")
    eval_batch_size: int | None = Field(default=None, ge=1, description="default: batch_size")


# What differs by objective. Learning rates: (full fine-tuning, LoRA).
LEARNING_RATES = {"sft": (2e-5, 2e-4), "dpo": (1e-6, 2e-5), "reward": (1e-5, 1e-4), "kto": (1e-6, 2e-5),
                  "grpo": (1e-5, 1e-4), "rloo": (1e-5, 1e-4)}
RL_OBJECTIVES = ("grpo", "rloo")  # online: the model's own samples, scored by reward terms (rl_config.py)
DEFAULTS: dict[str, dict] = {
    "sft": {"batch_size": 8},
    "dpo": {"batch_size": 4, "beta": 0.1},  # a pair is two sequences, and a reference pass
    "reward": {"batch_size": 8},
    "kto": {"batch_size": 8, "beta": 0.1},  # KTO's KL estimate needs more than one row per batch
    "grpo": {}, "rloo": {},  # RLConfig's own defaults
}
