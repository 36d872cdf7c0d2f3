"""`factory pick RUN [RUN ...] --set FOLDER`: choose a training checkpoint on an eval set's validation
split, and write it out as a model folder.

`factory train grpo|rloo` keeps every checkpoint with `keep_checkpoints: true`; several runs (say, one
per reward setting) pool theirs. Each checkpoint and the baseline answer the split (`factory eval
--set`'s measurement: K samples per question, no calibration). For a QA set the goal has two sides,
as the `idk` target does: a wrong-answer rate at most `--wrong-ratio` times the baseline's, and an
accuracy at most `--max-accuracy-drop` below the baseline's. The pick is the checkpoint with the most
room on its tighter side (the largest min(accuracy - floor, ceiling - wrong rate)); `met` says
whether that room is positive. (The first rule tried, the fewest wrong answers among the checkpoints
that keep the accuracy, chose a checkpoint on the accuracy floor, 0.012 above it on 120 validation
questions, which fell 0.06 below it on the test questions: README, `make idk-demo`.) For a behaviour
set, the highest behaviour-match rate. The test split is never read.

OUT gets the chosen checkpoint's model files (weights, config, tokenizer; not the optimiser state), so
`local:OUT` is the model, with pick.json (every candidate's figures and room, the rule, the choice) and
the measurement in OUT/eval.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from factory.errors import FactoryError, InputError

TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin")
RATES = {"accuracy": "accuracy", "decline": "decline_rate", "wrong": "wrong_answer_rate",
         "behaviour_match": "behaviour_match"}


def figures(measured: dict) -> dict:
    return {name: measured[key]["rate"] for name, key in RATES.items() if key in measured}


def choose(rows: list[dict], base: dict, max_drop: float, wrong_ratio: float) -> tuple[dict, bool]:
    """The pick among ROWS (each a checkpoint's figures; QA rows get their `room`), and whether it met
    both sides of the goal."""
    if "accuracy" not in base:
        return max(rows, key=lambda r: r["behaviour_match"]), True
    for r in rows:
        r["room"] = round(min(r["accuracy"] - (base["accuracy"] - max_drop), wrong_ratio * base["wrong"] - r["wrong"]), 4)
    chosen = max(rows, key=lambda r: (r["room"], r["accuracy"]))
    return chosen, chosen["room"] >= 0


def pick(runs: list[Path], eval_set: Path, out: Path, *, baseline: str, split: str = "validation", samples: int = 5,
         max_drop: float = 0.02, wrong_ratio: float = 0.5, config: Path | None = None) -> dict:
    from factory.engine.rundir import now, write_json
    from factory.evals.run import run_set
    from factory.train.rl import checkpoint_step, checkpoints

    found: list[Path] = []
    for run in runs:
        if not (mine := checkpoints(run)):
            raise InputError(run, "no checkpoint-* folders: train with `keep_checkpoints: true` (grpo, rloo) to "
                                  "keep them")
        found += mine
    for c in found:
        if not (c / "config.json").is_file():
            raise InputError(c, "not a model checkpoint (no config.json): an interrupted save? remove it")
    if out.exists() and any(out.iterdir()):
        raise FactoryError(f"{out}: already exists and is not empty; choose another --out")
    specs = [f"local:{c}" for c in found]
    report, _ = run_set(eval_set, specs + [baseline], out / "eval", config=config, samples=samples,
                        calibrate=False, split=split)
    base = figures(report["models"][baseline])
    rows = [{"checkpoint": str(c), "step": checkpoint_step(c), **figures(report["models"][s])}
            for c, s in zip(found, specs, strict=True)]
    chosen, met = choose(rows, base, max_drop, wrong_ratio)
    for f in Path(chosen["checkpoint"]).iterdir():
        if f.is_file() and f.name not in TRAINING_STATE and not f.name.startswith("rng_state"):
            shutil.copy2(f, out / f.name)
    rule = (f"most room on the tighter side of: accuracy >= baseline's - {max_drop}, wrong-answer rate <= "
            f"{wrong_ratio} x baseline's" if "accuracy" in base else "highest behaviour-match rate")
    result = {"runs": [str(r) for r in runs], "set": str(eval_set), "split": split, "items": report["items"],
              "samples": samples, "baseline": {"model": baseline, **base}, "checkpoints": rows, "rule": rule,
              "chosen": chosen, "met": met, "finished": now()}
    write_json(out / "pick.json", result)
    return result


@click.command("pick")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--set", "eval_set", required=True, type=click.Path(exists=True, path_type=Path),
              help="The eval set folder (`factory evals generate --validation N`).")
@click.option("--split", type=click.Choice(["validation", "test"]), default="validation", show_default=True,
              help="The split to choose on (choosing on test would bias the test figures).")
@click.option("--baseline", default="local:smollm2", show_default=True, help="The model the rule compares with.")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0), default=0.02, show_default=True,
              help="QA: how far below the baseline's accuracy a checkpoint may be.")
@click.option("--wrong-ratio", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="QA: the wrong-answer rate aimed for, as a share of the baseline's.")
@click.option("--samples", type=click.IntRange(1, 32), default=5, show_default=True, help="Answers per question.")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), help="Pipeline config (answer settings, seed).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the chosen model (use it as local:OUT), pick.json and the evaluation.")
def pick_(runs: tuple[Path, ...], eval_set: Path, split: str, baseline: str, max_accuracy_drop: float,
          wrong_ratio: float, samples: int, config: Path | None, out: Path) -> None:
    """Choose a checkpoint of the RUNs on an eval set's validation split: for QA, the one with the most room
    on the tighter side of (accuracy within --max-accuracy-drop of the baseline's, wrong-answer rate at
    most --wrong-ratio of the baseline's); for behaviour sets, the best match. Prints each checkpoint's
    figures and OUT."""
    from factory.commands.show import stderr, stdout

    result = pick(list(runs), eval_set, out, baseline=baseline, split=split, samples=samples,
                  max_drop=max_accuracy_drop, wrong_ratio=wrong_ratio, config=config)
    names = [k for k in RATES if k in result["baseline"]] + (["room"] if "accuracy" in result["baseline"] else [])
    stdout.print("\t".join(["model", *names]), markup=False)
    for row in [{"checkpoint": baseline, **result["baseline"]}, *result["checkpoints"]]:
        mark = " (chosen)" if row["checkpoint"] == result["chosen"]["checkpoint"] else ""
        cells = [f"{row[k]:.3f}" if k in row else "-" for k in names]  # the baseline has no room
        stdout.print("\t".join([row["checkpoint"] + mark, *cells]), markup=False)
    if not result["met"]:
        stderr.print("no checkpoint met both sides of the goal on this split: chose the one nearest to it",
                     markup=False)
    stdout.print(str(out), markup=False, highlight=False, soft_wrap=True)
