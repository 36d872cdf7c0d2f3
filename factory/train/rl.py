"""`factory train grpo|rloo`: reinforcement learning on the model's own samples with TRL's
GRPOTrainer / RLOOTrainer, the reward from the factory's feedback (rewards.py).

Everything is checked before a model loads: the config (rl_config.py), the pipeline it names, the
prompts (and, for an `idk` term, each prompt's reference answers). Then the rollouts go to
OUT/rollouts (rollouts.py), one row per step to metrics.jsonl, a checkpoint every `save_steps`
steps; `--resume OUT` continues a killed run from its last complete checkpoint. At the end: the
model (LoRA merged), train_meta.json, the card and report.html.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
import warnings
from pathlib import Path

from rich.console import Console

from factory.config import DEFAULT_CONFIG, IdkConfig, load_config
from factory.engine.calllog import CallLog
from factory.engine.pipeline import Overrides, Pipeline
from factory.engine.prices import Budget, BudgetExceeded, require_prices
from factory.engine.rundir import command_line, now, package_versions, write_json
from factory.engine.stats import Stats
from factory.errors import FactoryError, InputError, StoppedAtBudget
from factory.hygiene.filters import degenerate
from factory.inputs import PromptFile
from factory.models.spec import ModelSpec
from factory.records import Record
from factory.stages.idk import references_of, wrong_of
from factory.train.data import card_configs
from factory.train.model import load_policy, load_tokenizer, lora_config, model_folder
from factory.train.progress import ProgressCallback
from factory.train.rl_config import NOT_RL, IdkTerm, RLConfig
from factory.train.rollouts import SAMPLES, RolloutSink, SampleCallback, write_card
from factory.train.run import check_out, is_main_process, peak_memory_mb, save
from factory.yamlfile import jsonl_lines

RUN_FILE = "rl_run.json"  # what --resume needs: objective, data, model, the resolved config


# ---------------------------------------------------------------- prompts

def _located(data: Path) -> list[tuple[Record, Path, int | None]]:
    """(record, file, line) for each prompt DATA holds: a prompts JSONL file, a pipeline YAML (its seed
    files), a finished run directory (its train split, metadata kept) or a dataset folder (`prompt`s)."""
    if data.is_file() and data.suffix in (".yaml", ".yml"):
        cfg = load_config(data)
        if not cfg.stages.questions.seeds:
            raise InputError(data, "lists no seed files to take prompts from", field="stages.questions.seeds")
        return [x for s in cfg.stages.questions.seeds for x in _located(cfg.path(s))]
    if data.is_file():
        pf = PromptFile(data, "file")
        return [(Record.new(prompt, "file", **extra), data, line) for line, prompt, extra in pf.lines()]
    if (data / "manifest.json").is_file() and any((data / f).is_file() for f in ("state.sqlite", "records.jsonl")):
        from factory.commands.evaluate import held_out

        return [(rec, data, None) for rec in held_out(data, None, split="train")]
    from datasets import load_dataset

    configs = card_configs(data)
    name = next((c for c in ("prefs", "kto", "sft") if c in configs), None)
    if name is None:
        raise FactoryError(f"{data}: no prefs, kto or sft config to take prompts from")
    rows = load_dataset(str(data), name)[f"train_{name}"]
    turns = rows["prompt"] if "prompt" in rows.column_names else rows["messages"]
    if any(not isinstance(t, str) and sum(m["role"] != "assistant" for m in t) > 1 for t in turns):
        raise FactoryError(f"{data}: its prompts are conversations (a system prompt or earlier turns); online RL "
                           "takes single prompts")
    texts = [t if isinstance(t, str) else next(m["content"] for m in t if m["role"] == "user") for t in turns]
    return [(Record.new(t, "file"), data, None) for t in texts]


def load_prompts(data: Path, cfg: RLConfig) -> list[Record]:
    """The training prompts, each once; an `idk` term needs reference answers on every one."""
    if not data.exists():
        raise FactoryError(f"{data}: no such file or folder (DATA is a prompts JSONL file, a pipeline YAML, "
                           "a run directory or a dataset folder)")
    seen, out = set(), []
    for rec, path, line in _located(data):
        if rec.system is not None or rec.history:  # a run directory's records (files refuse them when read)
            raise FactoryError(f"{path}: prompt {rec.id} is a conversation (a system prompt or earlier turns); "
                               "online RL takes single prompts")
        for term in (t for t in cfg.rewards if isinstance(t, IdkTerm)):
            if isinstance(references_of(rec, term.answers_field), str):
                which = "" if line else f" (prompt {rec.prompt[:60]!r})"
                raise InputError(path, f"the idk reward needs reference answers on every prompt{which}: a list of "
                                 f"strings, e.g. \"{term.answers_field}\": [\"Paris\"]", line=line,
                                 field=term.answers_field)
            if isinstance(wrong_of(rec, IdkConfig().wrong_field), str):
                raise InputError(path, "known wrong answers must be a list of strings", line=line,
                                 field=IdkConfig().wrong_field)
        if rec.id not in seen:
            seen.add(rec.id)
            out.append(rec)
    if not out:
        raise FactoryError(f"{data}: no prompts")
    return out[:cfg.max_prompts]


def pipeline_of(cfg: RLConfig, data: Path, max_cost: float | None) -> Pipeline:
    path = Path(cfg.pipeline) if cfg.pipeline else data if data.suffix in (".yaml", ".yml") else DEFAULT_CONFIG
    return Pipeline.prepare(load_config(path), Overrides(max_cost=max_cost), needs_seeds=False)


# ---------------------------------------------------------------- the trainer

def rl_args(objective: str, cfg: RLConfig, out: Path, bf16: bool, cpu: bool, weights: list[float]):
    from trl import GRPOConfig, RLOOConfig

    kw = {
        "output_dir": str(out), "per_device_train_batch_size": cfg.batch_size, "gradient_accumulation_steps": cfg.grad_accum,
        "max_steps": cfg.max_steps, "num_train_epochs": cfg.epochs, "learning_rate": cfg.learning_rate,
        "warmup_steps": cfg.warmup, "lr_scheduler_type": cfg.scheduler, "weight_decay": cfg.weight_decay,
        "max_grad_norm": cfg.max_grad_norm, "seed": cfg.seed, "data_seed": cfg.seed, "bf16": bf16, "use_cpu": cpu,
        "logging_steps": cfg.logging_steps, "logging_first_step": True, "report_to": [], "disable_tqdm": True,
        "save_strategy": "steps", "save_steps": cfg.save_steps, "save_total_limit": None if cfg.keep_checkpoints else cfg.save_total_limit,
        "num_generations": cfg.num_generations, "max_completion_length": cfg.max_completion_length,
        "temperature": cfg.temperature, "top_p": cfg.top_p, "beta": cfg.beta, "log_completions": False,
        "use_vllm": cfg.use_vllm, "vllm_mode": cfg.vllm_mode, "reward_weights": weights,
        "activation_checkpointing" if "activation_checkpointing" in GRPOConfig.__dataclass_fields__
        else "gradient_checkpointing": cfg.gradient_checkpointing,
    }
    if cfg.steps_per_generation:
        kw["steps_per_generation"] = cfg.steps_per_generation
    if objective == "grpo":
        kw |= {k: v for k, v in (("loss_type", cfg.loss_type), ("scale_rewards", cfg.scale_rewards)) if v is not None}
        return GRPOConfig(**kw)
    return RLOOConfig(**kw)


def instrument(trainer, sink: RolloutSink | None, names: list[str], tokenizer,
               outcomes: dict[str, dict[str, float]] | None = None) -> None:
    """Wrap the trainer's generation round (rollouts, the degenerate share, and per idk term each
    outcome's share and mean advantage) and its checkpoint (the rollouts flushed first), and silence
    its model card (OUT/README.md is the rollouts card)."""
    generate, checkpoint, sample = trainer._generate_and_score_completions, trainer._save_checkpoint, trainer._generate
    timing = trainer.factory_timing = {"rollout_s": 0.0, "round_s": 0.0, "rollout_tokens": 0}

    def timed_sample(prompts):
        t0 = time.perf_counter()
        try:
            return sample(prompts)
        finally:
            timing["rollout_s"] += time.perf_counter() - t0

    def generate_and_record(inputs):
        t0 = time.perf_counter()
        out = generate(inputs)
        timing["round_s"] += time.perf_counter() - t0  # sampling, rewards, reference log-probs
        timing["rollout_tokens"] += int(out["completion_mask"].sum())
        logs, n = trainer._logs, len(inputs) * trainer.accelerator.num_processes
        completions = list(logs["completion"])[-n:]
        from factory.train.rewards import text_of

        if trainer.accelerator.num_processes == 1:  # the sampled tokens themselves
            ids = [row[mask.bool()].tolist() for row, mask in zip(out["completion_ids"], out["completion_mask"],
                                                                   strict=True)]
        else:  # every process's samples, as text: tokenised again
            ids = [tokenizer(text_of(c), add_special_tokens=False)["input_ids"] for c in completions]
        flags = [degenerate(x) for x in ids]
        trainer._metrics["train"]["degenerate_share"].append(sum(flags) / max(len(flags), 1))
        rewards, advantages = {name: list(logs["rewards"][name])[-n:] for name in names}, list(logs["advantages"])[-n:]
        for name, values in (outcomes or {}).items():
            log_outcomes(trainer._metrics["train"], name, values, rewards[name], advantages)
        if sink is not None:
            sink.add(trainer.state.global_step, list(logs["prompt"])[-n:], completions, rewards, advantages,
                     flags, [len(x) for x in ids])
        return out

    def save_checkpoint(model, trial):
        if sink is not None:
            sink.flush()
        checkpoint(model, trial)

    trainer._generate = timed_sample
    trainer._generate_and_score_completions = generate_and_record
    trainer._save_checkpoint = save_checkpoint
    trainer.create_model_card = lambda *a, **k: None


def log_outcomes(metrics: dict, name: str, values: dict[str, float], got: list[float], advantages: list[float]) -> None:
    """`NAME/OUTCOME_share` and `NAME/OUTCOME_advantage` (the mean advantage of the samples with that
    outcome, where there were any): whether GRPO pushes declines up or down, inside their groups.
    Outcomes configured to the same value cannot be told apart and are left out."""
    for outcome, value in values.items():
        if list(values.values()).count(value) > 1:
            continue
        hit = [a for v, a in zip(got, advantages, strict=True) if v == value]
        metrics[f"{name}/{outcome}_share"].append(len(hit) / max(len(got), 1))
        if hit:
            metrics[f"{name}/{outcome}_advantage"].append(sum(hit) / len(hit))


def checkpoint_step(path: Path) -> int:
    """N of a checkpoint-N folder (-1 for a name that holds none)."""
    tail = path.name.split("-")[-1]
    return int(tail) if tail.isdigit() else -1


def checkpoints(out: Path) -> list[Path]:
    """OUT's checkpoint-N folders, by step."""
    return sorted(out.glob("checkpoint-*"), key=checkpoint_step)


def last_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint (trainer_state.json is written last); incomplete ones removed."""
    good = None
    for ckpt in checkpoints(out):
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
            good = ckpt
        except (OSError, ValueError):
            shutil.rmtree(ckpt, ignore_errors=True)
    return good


def rewind(out: Path, step: int, sink: RolloutSink) -> None:
    """Back to the checkpoint at STEP: what was written after it is made again."""
    sink.truncate(step)
    for name, key in (("metrics.jsonl", "step"), (SAMPLES, "step")):
        path = out / name
        if path.is_file():
            rows = [line for _, line in jsonl_lines(path.read_text()) if json.loads(line)[key] <= step]
            path.write_text("".join(r + "\n" for r in rows))


def train_rl(objective: str, data: Path | None, model_spec: str, out: Path, cfg: RLConfig | None, *,
             resume: bool = False, max_cost: float | None = None, console: Console | None = None) -> dict:
    """Train OBJECTIVE on prompts from DATA starting from MODEL_SPEC into OUT (or continue OUT)."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, set_seed
    from transformers.utils import logging

    from factory.train import rewards as reward_terms

    logging.disable_progress_bar()
    console = console or Console(stderr=True)
    out = Path(out)
    if resume:
        saved = out / RUN_FILE
        if not saved.is_file():
            raise FactoryError(f"{out}: nothing to resume (no {RUN_FILE}); start a run with --out")
        run = json.loads(saved.read_text())
        if run["objective"] != objective:
            raise FactoryError(f"{out} is a {run['objective']} run; resume it with `factory train {run['objective']}`")
        data, model_spec, cfg = Path(run["data"]), run["model"], RLConfig(**run["config"])
        max_cost = max_cost if max_cost is not None else run.get("max_cost")
    else:
        check_out(out)
        if data is None or cfg is None:
            raise FactoryError("DATA and --config are needed (or --resume OUT)")
    assert cfg is not None and data is not None
    pipe = pipeline_of(cfg, data, max_cost)
    records = load_prompts(data, cfg)
    path = model_folder(model_spec)
    tokenizer = load_tokenizer(path)
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_json(out / RUN_FILE, {"objective": objective, "run_id": secrets.token_hex(4),
                                    "data": str(data.resolve()), "model": model_spec,
                                    "config": cfg.model_dump(mode="json", exclude=NOT_RL),
                                    "max_cost": max_cost,
                                    "started": now(), "command": command_line()})
    checkpoint = last_checkpoint(out) if resume else None

    template = pipe.templates["answer"]
    rows = [{"prompt": template.render(prompt=r.prompt), "key": r.id} for r in records]
    by_key = {r.id: r for r in records}
    rw = reward_terms.build(cfg, pipe, by_key, model_spec)  # loads the judge, reference and scorer models
    if pipe.cfg.max_cost is not None:
        require_prices(pipe.prices, [ModelSpec.parse(s) for s in pipe.models], "--max-cost")
    sink = RolloutSink(out, rw.names, rw.weights, json.loads((out / RUN_FILE).read_text())["run_id"])
    if resume:
        rewind(out, int(checkpoint.name.split("-")[1]) if checkpoint else 0, sink)
    if is_main_process():  # loadable from the first flush on, killed or not
        write_card(out, objective, rw.names, rw.weights, sink.total_rows, model_spec, sink.run_id)
    log = CallLog(out / "calls.sqlite")
    budget = Budget(pipe.cfg.max_cost, spent=log.spent())
    stats = Stats(["answer", "judge", "idk", "factcheck"])
    rw.caller = pipe.caller(log, stats, budget)

    cuda = torch.cuda.is_available()
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and cuda and torch.cuda.is_bf16_supported())
    set_seed(cfg.seed)
    progress = ProgressCallback(out / "metrics.jsonl" if is_main_process() else None, console)
    n = min(cfg.report_prompts, len(rows))  # spread over the prompts file: the first, the last, between
    fixed = [rows[round(i * (len(rows) - 1) / max(n - 1, 1))]["prompt"] for i in range(n)]
    samples = SampleCallback(out / SAMPLES, fixed, tokenizer, cfg.max_completion_length)
    warnings.filterwarnings("ignore", message=r"`\w*gradient_checkpointing\w*` is deprecated", category=FutureWarning)
    from trl import GRPOTrainer, RLOOTrainer

    trainer_class = GRPOTrainer if objective == "grpo" else RLOOTrainer
    trainer = trainer_class(load_policy(path), reward_funcs=rw.funcs, args=rl_args(objective, cfg, out, bf16, not cuda, rw.weights),
                            train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                            peft_config=lora_config(cfg, objective) if cfg.lora else None,
                            callbacks=[progress, samples])
    trainer.remove_callback(PrinterCallback)
    main = trainer.is_world_process_zero()
    instrument(trainer, sink if main else None, rw.names, tokenizer, rw.outcomes)
    if main:
        console.print(f"[bold]{objective}[/bold] on {len(records)} prompts from {data}, model {model_spec}"
                      f"{' + LoRA' if cfg.lora else ''}, reward: "
                      + " + ".join(f"{w:g}x{n}" for n, w in zip(rw.names, rw.weights, strict=True))
                      + f", {cfg.num_generations} samples per prompt, beta {cfg.beta}, "
                      f"{'bf16' if bf16 else 'fp32'} on {trainer.accelerator.device}"
                      + (f"; resuming from {checkpoint.name}" if checkpoint else ""), highlight=False)
    t0 = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except BudgetExceeded as e:
        sink.flush()
        raise StoppedAtBudget(f"stopped before passing the budget: {e}. The last checkpoint is in {out}; continue with: "
                           f"factory train {objective} --resume {out} --max-cost USD") from None
    finally:
        _close(trainer, pipe, log)
    seconds = time.perf_counter() - t0
    sink.flush()
    save(trainer, tokenizer, cfg, out)
    meta = {
        "objective": objective, "kind": "causal_lm",
        "data": {"path": str(data.resolve()), "prompts": len(records)},
        "base_model": {"spec": model_spec, "path": str(path.resolve())},
        "config": cfg.model_dump(mode="json"), "pipeline": str(pipe.cfg.path(".")),
        "reward_terms": dict(zip(rw.names, rw.weights, strict=True)),
        "metrics": {"train": dict(result.metrics), "steps": trainer.state.global_step,
                    "last": progress.rows[-1] if progress.rows else None},
        "rollouts": sink.total_rows, "calls": stats.to_dict()["stages"], "cost_usd": round(log_spent(out), 6),
        "train_seconds": round(seconds, 3), "throughput": throughput(trainer, seconds), **peak_memory_mb(), "device": str(trainer.accelerator.device),
        "processes": trainer.accelerator.num_processes, "precision": "bf16" if bf16 else "fp32",
        "resumed_from": checkpoint.name if checkpoint else None, "finished": now(), "command": command_line(),
        "packages": package_versions(),
    }
    if main:
        write_json(out / "train_meta.json", meta)
        write_card(out, objective, rw.names, rw.weights, sink.total_rows, model_spec, sink.run_id)
        from factory.train.rl_report import write_report

        write_report(out)
        if not cfg.keep_checkpoints:  # the run finished: the model is saved
            for ckpt in checkpoints(out):
                shutil.rmtree(ckpt, ignore_errors=True)
        console.print(f"done: {trainer.state.global_step} steps in {seconds:.1f}s, {sink.total_rows} rollouts, "
                      f"peak RSS {meta['peak_rss_mb']:.0f} MB", highlight=False)
    return meta


def throughput(trainer, seconds: float) -> dict:
    """Rollout tokens/s (sampling only) and update tokens/s (prompt and completion tokens trained on, over
    the time outside generation rounds: forward, backward, optimiser), this process, this session."""
    t = trainer.factory_timing
    update_s = max(seconds - t["round_s"], 1e-9)
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    return {"rollout_tokens": t["rollout_tokens"], "rollout_seconds": round(t["rollout_s"], 3),
            "rollout_tokens_per_s": round(t["rollout_tokens"] / t["rollout_s"], 1) if t["rollout_s"] else None,
            "round_seconds": round(t["round_s"], 3), "update_seconds": round(update_s, 3), "update_tokens": tokens,
            "update_tokens_per_s": round(tokens / update_s, 1)}


def log_spent(out: Path) -> float:
    log = CallLog(out / "calls.sqlite")
    try:
        return log.spent()
    finally:
        log.close()


def _close(trainer, pipe: Pipeline, log: CallLog) -> None:
    """Close the backends on the loop that used them (TRL's reward loop), then the call log."""
    import asyncio

    loop = getattr(trainer, "async_loop", None)
    try:
        if loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(pipe.aclose(), loop).result(timeout=60)
        else:
            asyncio.run(pipe.aclose())
    finally:
        log.close()
