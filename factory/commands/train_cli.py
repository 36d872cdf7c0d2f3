"""`factory train`: fine-tune a local model with TRL, offline on datasets or online on its own samples."""

from __future__ import annotations

from pathlib import Path

import click

from factory.commands.show import stderr, stdout


@click.command("train")
@click.argument("objective", type=click.Choice(["sft", "dpo", "reward", "kto", "grpo", "rloo"]))
@click.argument("data", required=False, type=click.Path(path_type=Path))
@click.option("--model", "model_spec", default="local:smollm2", show_default=True,
              help="The model to start from: local:smollm2 (the embedded model) or local:PATH (a HF folder).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the trained model (must not exist or be empty); use it as local:OUT.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML file of training settings (learning_rate, batch_size, max_steps, lora_r, ...; for grpo "
                   "and rloo also `rewards:`).")
@click.option("--max-steps", type=click.IntRange(min=1), help="Optimiser steps (default: one epoch).")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), help="Epochs when --max-steps is not set.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Peak learning rate.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Examples (or pairs, or samples) per device per step.")
@click.option("--max-length", type=click.IntRange(min=8), help="Tokens per sequence; longer rows are cut.")
@click.option("--beta", type=click.FloatRange(min=0), help="DPO and KTO: the pull toward the reference; grpo and "
              "rloo: the KL penalty toward the starting model (0: none).")
@click.option("--reference", help="dpo and kto: the frozen reference model, a local: spec (default: --model), "
              "e.g. local:smollm2 when --model is an earlier round's output.")
@click.option("--lora/--no-lora", default=None, help="Train a LoRA adapter, merged into the saved model.")
@click.option("--seed", type=int, help="Seed for initialisation and data order (default 0).")
@click.option("--num-generations", type=click.IntRange(min=2), help="grpo/rloo: samples per prompt.")
@click.option("--max-cost", type=click.FloatRange(min=0, min_open=True),
              help="grpo/rloo: USD the reward's model calls may spend (stops cleanly before passing it).")
@click.option("--resume", "resume", type=click.Path(file_okay=False, path_type=Path),
              help="grpo/rloo: continue the run in this folder from its last checkpoint.")
def train_(objective: str, data: Path | None, model_spec: str, out: Path | None, config_file: Path | None,
           max_steps: int | None, epochs: float | None, lr: float | None, batch_size: int | None,
           max_length: int | None, beta: float | None, reference: str | None, lora: bool | None, seed: int | None,
           num_generations: int | None, max_cost: float | None, resume: Path | None) -> None:
    """Fine-tune a local model with TRL: offline on DATA (a run directory or dataset folder), or online (grpo,
    rloo) on its own samples to DATA's prompts (a prompts JSONL file, a pipeline YAML's seeds, a run).

    \b
    sft     supervised, on the `sft` config (messages)
    dpo     on `prefs`, against a frozen copy of the starting model (or --reference)
    reward  a one-logit reward model on `reward` (with the judge's margin)
    kto     on `kto` (unpaired rows labelled good or bad)
    grpo    group-relative policy optimisation; the reward is the config's `rewards:` terms
    rloo    REINFORCE leave-one-out, same reward

    Writes the model, its tokenizer, train_meta.json and metrics.jsonl into OUT, and prints OUT last;
    grpo and rloo also write the `rollouts` dataset, report.html and checkpoints (--resume OUT).
    Runs on CUDA in bf16 when there is one, and under `accelerate launch` on several GPUs as it is.
    """
    from factory.train import is_main_process, resolve
    from factory.train import train as run_training

    if objective in ("grpo", "rloo"):
        from factory.train.rl import train_rl

        if resume is not None:
            given = [v for v in (data, out, config_file, max_steps, epochs, lr, batch_size, max_length, beta, reference,
                                 lora, seed, num_generations) if v is not None]
            if given:
                raise click.UsageError("--resume continues with the run's saved data, model and settings; only "
                                       "--max-cost may be given with it")
            target = resume
            train_rl(objective, None, model_spec, resume, None, resume=True, max_cost=max_cost, console=stderr)
        else:
            if data is None or out is None:
                raise click.UsageError(f"{objective} needs DATA and --out (or --resume OUT)")
            cfg = resolve(objective, config_file, max_steps=max_steps, epochs=epochs, learning_rate=lr,
                          batch_size=batch_size, max_length=max_length, beta=beta, reference=reference, lora=lora,
                          seed=seed, num_generations=num_generations)
            target = out
            train_rl(objective, data, model_spec, out, cfg, max_cost=max_cost, console=stderr)
    else:
        if data is None or out is None:
            raise click.UsageError(f"{objective} needs DATA and --out")
        if any(v is not None for v in (num_generations, max_cost, resume)):
            raise click.UsageError("--num-generations, --max-cost and --resume are for grpo and rloo")
        cfg = resolve(objective, config_file, max_steps=max_steps, epochs=epochs, learning_rate=lr,
                      batch_size=batch_size, max_length=max_length, beta=beta, reference=reference, lora=lora,
                      seed=seed)
        run_training(objective, data, model_spec, out, cfg, stderr)
        target = out
    if is_main_process():  # under accelerate launch, once
        stdout.print(str(target), markup=False, highlight=False, soft_wrap=True)
