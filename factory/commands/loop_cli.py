"""`factory loop`: iterated rounds of generate, label, train and evaluate (factory/loop/)."""

from __future__ import annotations

from pathlib import Path

import click

from factory.commands.show import stderr, stdout
from factory.errors import FactoryError


@click.command("loop")
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--rounds", type=int, help="Rounds to run (at least 1).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="The loop directory (new or empty).")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Continue the loop in this directory at the step where it stopped.")
@click.option("--max-cost", type=click.FloatRange(min=0, min_open=True),
              help="USD per round's run, in place of the pipeline's max_cost (a loop stopped at its budget "
                   "continues with --resume DIR --max-cost USD).")
def loop(config: Path | None, rounds: int | None, out: Path | None, resume_dir: Path | None,
         max_cost: float | None) -> None:
    """Iterated rounds: generate with the last round's policy, label, train, evaluate, K times.

    CONFIG is a pipeline YAML with a `loop:` section (held_out, objective, start_from, judge: fixed|self,
    mix, eval_judge, ...). DIR holds round-K/{run,train,eval,eval_prev}, loop.json and report.html;
    `factory inspect DIR` prints the per-round table. Prints DIR last."""
    from factory.loop import run_loop
    from factory.loop.table import print_loop

    if resume_dir is not None:
        if out is not None:
            raise FactoryError("--resume DIR continues that loop; drop --out")
        out = resume_dir
    elif out is None:
        raise FactoryError("factory loop needs --out DIR (or --resume DIR)")
    run_loop(config, rounds, out, stderr, resume=resume_dir is not None, max_cost=max_cost)
    print_loop(out, stderr)
    stdout.print(str(out), markup=False, highlight=False, soft_wrap=True)
