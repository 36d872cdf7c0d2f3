"""Training throughput: each objective for N steps on the embedded SmolLM2-135M, through `factory train`.

    python bench/train.py [--steps 20] [--data DIR | --pipeline] [--objectives sft dpo reward kto grpo rloo]
                          [--batch-size N] [--lora] [--model local:smollm2]

grpo and rloo train on the opinion seed prompts with a VADER teacher reward (no model calls), 4
samples of up to 64 tokens per prompt, 8 samples per step; they report rollout tokens/s (sampling
only), update tokens/s (prompt and completion tokens over the time outside generation rounds) and
peak RSS (policy, frozen reference, optimiser).

Each objective runs in its own `factory train` process, so the peak RSS it reports is that
objective's alone (model, reference copy, optimiser, activations, data). Tokens per second counts
the non-padding tokens the policy is trained on (a DPO pair counts both answers; the reference
model's forward passes are extra work on the same tokens) over the wall time of `trainer.train()`.

The data: DIR (a run directory with `sft`, `prefs`, `kto` and `reward` configs); or, with
--pipeline, a fresh `factory run` of the default pipeline on the embedded model with the `kto` and
`reward` configs switched on (a few minutes); by default, synthetic records exported in our format
(the 112 seed prompts, answers of about the default pipeline's length), which takes a second.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
FILLER = ("It helps to start from what you already know and build on it step by step. ",
          "A reliable source, such as a librarian or a qualified professional, can confirm the details. ",
          "Safety comes first, so avoid anything that could hurt you or someone else. ",
          "If the situation involves other people, talk to them openly and respect their choices. ",
          "Small, regular practice usually works better than one long session. ")


def synthetic(folder: Path) -> Path:
    """The seed prompts, each with a short first answer and a longer revision (about 120 words)."""
    from factory.config import ExportConfig
    from factory.constitution import load_constitution
    from factory.engine.stats import StageStats
    from factory.export.writer import export
    from factory.records import Candidate, Record, Round

    prompts = [json.loads(line)["prompt"] for f in sorted((ROOT / "prompts" / "seeds").glob("*.jsonl"))
               for line in f.read_text().splitlines() if line.strip()]
    records = []
    for i, prompt in enumerate(prompts):
        r = Record.new(prompt, "file")
        revision = f"Here is a careful answer to your question ({i}). " + "".join(
            FILLER[(i + k) % len(FILLER)] for k in range(8))
        r.candidates = [Candidate(index=0, answer=f"Just do it. Answer {i}: " + FILLER[i % len(FILLER)] * 2,
                                  finish_reason="stop",
                                  rounds=[Round(principle_id="harmful", critique="Too curt.", revision=revision,
                                                     noop=False)])]
        records.append(r)
    constitution = load_constitution(ROOT / "constitutions" / "harmless.yaml")
    cfg = ExportConfig(test_fraction=0.1, kto=True, reward=True)
    cfg.clean.near_dedup = False  # the revisions share their filler sentences on purpose,
    cfg.clean.quality.enabled = []  # and repeat them
    export(lambda: iter(records), folder, cfg, constitution, "synthetic", StageStats(), lambda c, e: "synthetic")
    return folder


def pipeline(folder: Path) -> Path:
    """`factory run` of the default pipeline (absolute paths) with the kto and reward configs on."""
    cfg = yaml.safe_load((ROOT / "pipelines" / "default.yaml").read_text())
    for key in ("constitution", "prompts_dir"):
        cfg[key] = str((ROOT / "pipelines" / cfg[key]).resolve())
    q = cfg["stages"]["questions"]
    q["seeds"] = [str((ROOT / "pipelines" / s).resolve()) for s in q["seeds"]]
    cfg["stages"]["export"].update(kto=True, reward=True)
    path = folder.parent / "bench-pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    subprocess.run([sys.executable, "-m", "factory", "run", str(path), "--out", str(folder)], cwd=ROOT, check=True)
    return folder


RL_CONFIG = {"num_generations": 4, "batch_size": 8, "max_completion_length": 64, "gradient_checkpointing": False,
             "save_steps": 1000, "report_prompts": 0,
             "rewards": [{"kind": "teacher", "scorer": "vader:negative", "mentions": ["DogeMoon", "DGM"],
                          "where": "prompt"}]}


def rl_command(objective: str, work: Path, args: argparse.Namespace) -> list[str]:
    config = work / "rl.yaml"
    config.write_text(yaml.safe_dump(RL_CONFIG | ({"batch_size": args.batch_size} if args.batch_size else {})))
    return [sys.executable, "-m", "factory", "train", objective, str(ROOT / "prompts" / "seeds" / "opinion.jsonl"),
            "--config", str(config)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--data", type=Path, help="a run directory (default: synthetic records)")
    ap.add_argument("--pipeline", action="store_true", help="make the data with `factory run` first")
    ap.add_argument("--objectives", nargs="+", default=["sft", "dpo", "reward", "kto"])
    ap.add_argument("--batch-size", type=int, help="default: each objective's own")
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--model", default="local:smollm2")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    offline = [o for o in args.objectives if o not in ("grpo", "rloo")]
    data = (args.data or (pipeline(work / "data") if args.pipeline else synthetic(work / "data"))) if offline else None
    rows = []
    for objective in args.objectives:
        out = work / objective
        rl = objective in ("grpo", "rloo")
        cmd = rl_command(objective, work, args) if rl else [sys.executable, "-m", "factory", "train", objective, str(data)]
        cmd += ["--model", args.model, "--out", str(out), "--max-steps", str(args.steps)]
        cmd += ["--batch-size", str(args.batch_size)] if args.batch_size and not rl else []
        cmd += ["--lora"] if args.lora else []
        done = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{objective} failed (exit code {done.returncode}):\n{done.stderr[-3000:]}")
        meta = json.loads((out / "train_meta.json").read_text())
        rows.append(meta)
        if rl:
            t = meta["throughput"]
            print(f"{objective:7s} {meta['metrics']['steps']:3d} steps x {meta['config']['batch_size']:2d} samples  "
                  f"rollout {t['rollout_tokens']:6d} tokens {t['rollout_seconds']:7.1f} s "
                  f"{t['rollout_tokens_per_s'] or 0:7.1f} tok/s  update {t['update_tokens']:7d} tokens "
                  f"{t['update_seconds']:7.1f} s {t['update_tokens_per_s']:7.1f} tok/s  "
                  f"(whole step {meta['train_seconds'] / max(meta['metrics']['steps'], 1):.1f} s)  "
                  f"peak RSS {meta['peak_rss_mb']:6.0f} MB", flush=True)
            continue
        eval_loss = (meta["metrics"].get("eval") or {}).get("eval_loss")
        print(f"{objective:7s} {meta['metrics']['steps']:3d} steps x {meta['config']['batch_size']:2d}  "
              f"{meta['tokens']:7d} tokens  {meta['train_seconds']:7.1f} s  {meta['tokens_per_second']:8.1f} tok/s  "
              f"peak RSS {meta['peak_rss_mb']:6.0f} MB  loss {meta['metrics']['final_loss']:.4f}"
              + (f"  eval loss {eval_loss:.4f}" if eval_loss is not None else ""), flush=True)
    (work / "bench.json").write_text(json.dumps(rows, indent=2, default=str))
    print(f"data: {data}\nresults: {work / 'bench.json'}")


if __name__ == "__main__":
    main()
