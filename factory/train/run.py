"""`factory train`: one TRL trainer per objective, then the model, its tokenizer (with the chat
template), train_meta.json and metrics.jsonl in the output folder.

Works as it is under `accelerate launch` (DDP): every process runs this same code, TRL and
accelerate split the batches, and only the main process writes files.
"""

from __future__ import annotations

import os
import resource
import sys
import time
import warnings
from pathlib import Path

from rich.console import Console

from factory.engine.rundir import command_line, now, package_versions, write_json
from factory.errors import FactoryError
from factory.train.config import DATA_CONFIG, TrainConfig
from factory.train.data import TrainData, load, load_wrapper, wrap
from factory.train.model import load_policy, load_reward, load_tokenizer, lora_config, model_folder
from factory.train.progress import ProgressCallback


def is_main_process() -> bool:
    """Rank 0, known before any trainer exists (torchrun and accelerate set RANK)."""
    return int(os.environ.get("RANK", "0")) == 0


def check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FactoryError(f"{out}: already exists and is not empty; choose another --out")


def trainer_args(objective: str, cfg: TrainConfig, out: Path, bf16: bool, cpu: bool):
    """The TRL config for OBJECTIVE: our settings, no checkpoints, no reporting, no tqdm (we print)."""
    from trl import DPOConfig, KTOConfig, RewardConfig, SFTConfig

    common = {
        "output_dir": str(out), "per_device_train_batch_size": cfg.batch_size,
        "per_device_eval_batch_size": cfg.eval_batch_size or cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum, "max_steps": cfg.max_steps, "num_train_epochs": cfg.epochs,
        "learning_rate": cfg.learning_rate, "warmup_steps": cfg.warmup, "lr_scheduler_type": cfg.scheduler,
        "weight_decay": cfg.weight_decay, "max_grad_norm": cfg.max_grad_norm, "max_length": cfg.max_length,
        "seed": cfg.seed, "data_seed": cfg.seed, "bf16": bf16, "use_cpu": cpu, "logging_steps": cfg.logging_steps,
        "logging_first_step": True, "save_strategy": "no", "eval_strategy": "no", "report_to": [],
        "disable_tqdm": True,
    }
    # transformers 5.x renamed gradient checkpointing and warns about the old name whenever it is given.
    name = "activation_checkpointing" if "activation_checkpointing" in SFTConfig.__dataclass_fields__ \
        else "gradient_checkpointing"
    common[name] = cfg.gradient_checkpointing
    if objective == "sft":
        return SFTConfig(**common)
    if objective == "dpo":
        return DPOConfig(beta=cfg.beta, **common)
    if objective == "kto":
        return KTOConfig(beta=cfg.beta, **common)
    return RewardConfig(**common)


def reference_folder(spec: str, tokenizer) -> Path:
    """The folder of the frozen model the DPO/KTO loss compares with, checked before anything is written."""
    path = model_folder(spec, "--reference")
    if len(load_tokenizer(path)) != len(tokenizer):
        raise FactoryError(f"--reference {spec}: its tokenizer differs from the starting model's ({len(tokenizer)} "
                           "tokens): the reference must share the policy's vocabulary, e.g. the base model it was "
                           "trained from")
    return path


def build_trainer(objective: str, path: Path, ref_path: Path, tokenizer, data: TrainData, cfg: TrainConfig, args, callback):
    from trl import DPOTrainer, KTOTrainer, RewardTrainer, SFTTrainer

    peft = lora_config(cfg, objective) if cfg.lora else None
    evaluate = data.test if cfg.evaluate else None
    kw = {"args": args, "train_dataset": data.train, "eval_dataset": evaluate, "processing_class": tokenizer,
          "peft_config": peft, "callbacks": [callback]}
    if objective == "sft":
        return SFTTrainer(load_policy(path), **kw)
    if objective == "reward":
        return RewardTrainer(load_reward(path, tokenizer), **kw)
    # DPO and KTO need a frozen reference: a second copy (TRL would reload it by a name our folder lacks),
    # or `reference`, or, with LoRA, the same weights with the adapter switched off.
    ref = None if cfg.lora else load_policy(ref_path)
    trainer = DPOTrainer if objective == "dpo" else KTOTrainer
    return trainer(load_policy(path), ref_model=ref, **kw)


def save(trainer, tokenizer, cfg: TrainConfig, out: Path) -> None:
    """A plain Hugging Face folder: LoRA adapters merged in, the tokenizer with its chat template."""
    if cfg.lora:
        model = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        model.config.use_cache = True
        if trainer.is_world_process_zero():
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
        return
    trainer.accelerator.unwrap_model(trainer.model).config.use_cache = True
    trainer.save_model(str(out))  # every process calls it (FSDP and DeepSpeed gather here); the main one writes
    if trainer.is_world_process_zero():
        (out / "training_args.bin").unlink(missing_ok=True)  # a pickle; the resolved config is in train_meta.json


def peak_memory_mb() -> dict:
    import torch

    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 1024  # bytes on macOS
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"peak_rss_mb": round(rss_kb * scale, 1), "peak_gpu_mb": round(gpu, 1) if gpu is not None else None}


def train(objective: str, data_dir: str | Path, model_spec: str, out: str | Path, cfg: TrainConfig,
          console: Console | None = None) -> dict:
    """Train OBJECTIVE on DATA_DIR starting from MODEL_SPEC, write OUT, and return train_meta."""
    import torch
    from transformers import PrinterCallback, set_seed
    from transformers.utils import logging

    logging.disable_progress_bar()  # "Writing model shards": our own progress lines are enough

    console = console or Console(stderr=True)
    out = Path(out)
    check_out(out)
    template = load_wrapper(cfg.template) if cfg.template else None
    data = load(data_dir, DATA_CONFIG[objective])
    if template is not None:
        data.train, data.test = (d if d is None else wrap(d, template) for d in (data.train, data.test))
    path = model_folder(model_spec)
    tokenizer = load_tokenizer(path)
    ref_path = reference_folder(cfg.reference, tokenizer) if cfg.reference else path
    main = is_main_process()
    if main:
        out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and cuda and torch.cuda.is_bf16_supported())
    set_seed(cfg.seed)  # before the reward head is initialised
    callback = ProgressCallback(out / "metrics.jsonl" if main else None, console)
    args = trainer_args(objective, cfg, out, bf16, cpu=not cuda)
    # TRL 1.16 calls transformers methods that 5.x renamed (activation_checkpointing): noise for our users.
    warnings.filterwarnings("ignore", message=r"`\w*gradient_checkpointing\w*` is deprecated", category=FutureWarning)
    trainer = build_trainer(objective, path, ref_path, tokenizer, data, cfg, args, callback)
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; ours prints one line per log
    if main and data.note:
        console.print(f"[yellow]{data.note}[/yellow]", highlight=False)
    if main:
        console.print(f"[bold]{objective}[/bold] on {data.folder} ({data.config}: {data.train.num_rows} train"
                      f"{f', {data.test.num_rows} test' if data.test is not None else ''} rows), model {model_spec}"
                      f"{' + LoRA' if cfg.lora else ''}{f', reference {cfg.reference}' if cfg.reference else ''}, "
                      f"{'bf16' if bf16 else 'fp32'} on "
                      f"{trainer.accelerator.device}, {trainer.accelerator.num_processes} process(es)")
    started = now()
    t0 = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t0
    tokens = int(getattr(trainer, "_total_train_tokens", callback.tokens))
    metrics = {"train": dict(result.metrics), "final_loss": callback.rows[-1]["loss"] if callback.rows else None,
               "steps": trainer.state.global_step}
    if data.test is not None and cfg.evaluate:
        metrics["eval"] = trainer.evaluate()
    save(trainer, tokenizer, cfg, out)
    meta = {
        "objective": objective,
        "kind": "reward_model" if objective == "reward" else "causal_lm",
        "data": {**data.provenance, **({"note": data.note} if data.note else {}), "rows": {"train": data.train.num_rows,
                                             "test": data.test.num_rows if data.test is not None else 0}},
        "base_model": {"spec": model_spec, "path": str(path.resolve())},
        "config": cfg.model_dump(mode="json"),
        "metrics": metrics,
        "train_seconds": round(seconds, 3),
        "tokens": tokens,
        "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,
        **peak_memory_mb(),
        "device": str(trainer.accelerator.device),
        "processes": trainer.accelerator.num_processes,
        "precision": "bf16" if bf16 else "fp32",
        "started": started,
        "finished": now(),
        "command": command_line(),
        "packages": package_versions(),
    }
    if trainer.is_world_process_zero():
        write_json(out / "train_meta.json", meta)
        loss = metrics["final_loss"]
        console.print(f"done: {metrics['steps']} steps in {seconds:.1f}s, {meta['tokens_per_second'] or 0:,.0f} tok/s, "
                      f"final loss {loss if loss is None else f'{loss:.4f}'}, peak RSS {meta['peak_rss_mb']:.0f} MB"
                      + (f", eval loss {metrics['eval'].get('eval_loss'):.4f}" if metrics.get("eval") else ""),
                      highlight=False)
    return meta
