"""`factory eval`: did training move the model? A win rate on held-out prompts, or an eval set's rates."""

from __future__ import annotations

from pathlib import Path

import click

from factory.commands.show import stdout
from factory.errors import FactoryError


@click.command("eval")
@click.option("--model", required=True, help="The model to evaluate, e.g. local:outputs/dpo-run.")
@click.option("--baseline", default="local:smollm2", show_default=True, help="The model it should beat.")
@click.option("--prompts", "source", type=click.Path(exists=True, path_type=Path),
              help="Held-out prompts: a JSONL file, or a run directory (its test split).")
@click.option("--judge", help="A model spec (pairwise, both orders, under the constitution) or a "
              "classifier: vader:positive, vader:negative, refusal:refuses, hf:PATH:LABEL. Required with --prompts.")
@click.option("--set", "eval_set", type=click.Path(path_type=Path), help="Instead of --prompts: an eval set "
              "(`factory evals generate`'s folder, or .jsonl/.parquet items). Measures --model and --baseline: "
              "behaviour-match rate, or for QA sets accuracy, decline and wrong-answer rates and calibration.")
@click.option("--no-calibration", is_flag=True, help="With a QA --set: skip P(IK) and P(True).")
@click.option("--split", type=click.Choice(["test", "validation"]), default="test", show_default=True,
              help="With a --set folder: which split to run.")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path),
              help="Pipeline config for the constitution, answer settings and judge settings (default: the default).")
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate on at most N prompts.")
@click.option("--benign-kind", "benign", multiple=True, help="Prompt `kind` values that deserve an answer, for the "
              "over-refusal rate (default: the config's export.clean.benign_kinds).")
@click.option("--samples", type=click.IntRange(1, 32), help="Answers per prompt from each model (sample k of one is "
              "judged against sample k of the other; default 1). With a QA --set: K answers per question (default 5).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="With --prompts: a shared call cache (as `factory run --cache-dir`): answers and verdicts any "
              "earlier evaluation made there are reused, so a baseline measured once is not sampled again.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for eval.json, answers.jsonl and calls.sqlite (default: outputs/<timestamp>).")
def eval_(model: str, baseline: str, source: Path | None, judge: str | None, eval_set: Path | None,
          no_calibration: bool, split: str, config: Path | None, limit: int | None, benign: tuple[str, ...],
          samples: int | None, cache_dir: Path | None, out: Path | None) -> None:
    """Did training move the model? Both models answer held-out prompts; the judge compares the answers in
    both orders. Prints the win rate with a 95% interval, per-principle results and over-refusal.
    With --set: each model's behaviour-match rate (or QA accuracy and calibration) on an eval set."""
    from factory.commands.evaluate import evaluate
    from factory.commands.show import eval_tables

    if eval_set is not None:
        if cache_dir is not None:
            raise FactoryError("--cache-dir goes with --prompts; an eval set's calls are cached in its --out folder")
        from factory.evals.cli import print_set_report
        from factory.evals.run import run_set

        report, folder = run_set(eval_set, [model, baseline], out, config=config, limit=limit,
                                 samples=samples or 5, calibrate=not no_calibration, split=split)
        print_set_report(stdout, report, folder)
        return
    if source is None or judge is None or split != "test":
        raise FactoryError("factory eval needs --prompts and --judge (win rate), or --set (an eval set, whose split "
                           "--split chooses)")

    report, folder = evaluate(model, baseline, source, judge, out, config=config, limit=limit,
                              benign=set(benign) if benign else None, samples=samples or 1, cache_dir=cache_dir)
    for table in eval_tables(report, model, baseline, judge):
        stdout.print(table)
    stdout.print(str(folder / "eval.json"), markup=False, highlight=False)
