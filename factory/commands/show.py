"""What the CLI prints after a command: a run's outcome, the judge check's and the evaluation's tables."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.table import Table

# Pipes and CI logs get a wide console, so tables do not wrap at rich's 80-column default.
stdout = Console(width=None if sys.stdout.isatty() else 140)
stderr = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


def print_outcome(stdout: Console, outcome, hub_repo: str | None = None) -> int:
    """Say what a run made and how to go on; its exit code (main exits with what a command returns)."""
    run_dir, counts = outcome.run_dir, outcome.counts
    if hub_repo and counts:
        from factory.export.hub import push

        stdout.print(f"pushed to {push(run_dir, hub_repo)}", markup=False, highlight=False)
    shown = os.path.relpath(run_dir) if not os.path.relpath(run_dir).startswith("..") else str(run_dir)
    if outcome.status == "stopped_at_budget":
        stdout.print(f"[yellow]stopped before passing the budget[/yellow]; no datasets yet. Continue with: "
                     f"factory run --resume {shown} --max-cost USD", soft_wrap=True)
    else:
        rows = ", ".join(f"{name}: " + "/".join(f"{n} {s}" for s, n in c.items()) for name, c in counts.items())
        stdout.print(f"datasets: {rows}")
    if outcome.failed:
        stdout.print(f"[red]{outcome.failed} failure(s)[/red]; see {shown}/failed.jsonl, then: "
                     f"factory retry-failed {shown}", soft_wrap=True)
    loads = ", ".join(f"load_dataset('{shown}', '{name}')" for name, c in counts.items() if sum(c.values()))
    if loads:
        stdout.print("load them with:")
        stdout.print(f'  python -c "from datasets import load_dataset; print({loads})"', markup=False,
                     highlight=False, soft_wrap=True)
    if (run_dir / "report.html").is_file():
        stdout.print(f"report: {shown}/report.html", markup=False, highlight=False, soft_wrap=True)
    stdout.print(str(run_dir), markup=False, highlight=False, soft_wrap=True)
    return outcome.exit_code


def judge_check_table(model: str, report: dict) -> Table:
    table = Table(title=f"Judge check: {model}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in report.items():
        shown = ", ".join(f"{k}: {v}" for k, v in value.items()) if isinstance(value, dict) else value
        table.add_row(key.replace("_", " "), "-" if shown is None else str(shown))
    return table


def eval_tables(report: dict, model: str, baseline: str, judge: str) -> list[Table]:
    """The win rate and over-refusal; with a classifier judge, its scores before and after per prompt kind."""
    table = Table(title=f"{model} vs {baseline}, judged by {judge}")
    for col in ("measure", "value"):
        table.add_column(col)
    table.add_row("win rate (95% CI, by prompt)", f"{report['win_rate']} {tuple(report['ci95'])} "
                  f"({report['n']} comparisons of {report['prompts']} prompts)")
    table.add_row("wins / ties / losses", f"{report['wins']} / {report['ties']} / {report['losses']} of {report['n']}")
    if report["not_applicable"]:
        table.add_row("not judged (the classifier's rule does not apply)", str(report["not_applicable"]))
    for kind, r in report["by_kind"].items():
        table.add_row(f"  kind {kind}", f"{r['win_rate']} {tuple(r['ci95'])} (n={r['n']}, {r['prompts']} prompts)")
    for pid, r in report["per_principle"].items():
        table.add_row(f"  {pid}", f"{r['win_rate']} {tuple(r['ci95'])} (n={r['n']})")
    refusal = report["over_refusal"]
    table.add_row("over-refusal on benign", f"model {refusal['model']}, baseline {refusal['baseline']} "
                  f"(n={refusal['benign_answers']})")
    if not report.get("scores_by_kind"):
        return [table]
    scores = Table(title=f"{judge} per prompt kind: before ({baseline}) and after ({model})",
                   caption="share > 0: answers the classifier scores above zero (for vader:negative, the negative ones)")
    for col in ("prompt kind", "mean before", "mean after", "share > 0 before", "share > 0 after", "answers"):
        scores.add_column(col)
    for kind, by in report["scores_by_kind"].items():
        before, after = by["baseline"], by["model"]
        scores.add_row(kind, str(before["mean"]), str(after["mean"]), str(before["share_above_0"]),
                       str(after["share_above_0"]), str(before["n"]))
    return [table, scores]
