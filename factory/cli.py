"""The command line. Thin: parse flags, call the package, print. User errors exit 2, no traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from factory import __version__
from factory.commands.show import print_outcome, stderr, stdout
from factory.commands.sources import prompt_options
from factory.config import DEFAULT_CONFIG, DEFAULT_CONSTITUTION, InputSource, load_config
from factory.errors import FactoryError

# Our own progress display replaces the libraries' bars (set before they are imported; users may override).
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")



@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="factory")
def cli() -> None:
    """Constitution Factory: training data from AI feedback.

    A model answers prompts, critiques each answer against a principle of a constitution (a YAML
    file), and revises it. The results become SFT and preference datasets for TRL.

    \b
    Start with:  factory run              (the default pipeline on the embedded model)
                 factory try "PROMPT"      (one prompt, every step printed, with a diff)
    """


@cli.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@prompt_options
@click.option("--limit", type=int, help="Process at most N prompts.")
@click.option("--model", help="Model spec for every stage, e.g. local:smollm2, openai:gpt-4o-mini, "
                              "anthropic:claude-haiku-4-5.")
@click.option("--concurrency", type=click.IntRange(min=1), help="Requests in flight per model endpoint (default 64).")
@click.option("--rpm", type=click.FloatRange(min=0, min_open=True), help="Requests per minute per endpoint "
              "(default: learned from the provider's rate-limit headers).")
@click.option("--tpm", type=click.FloatRange(min=0, min_open=True), help="Tokens per minute per endpoint.")
@click.option("--seed", type=int, help="Seed for principle draws, few-shot choice and sampling.")
@click.option("--max-cost", type=click.FloatRange(min=0, min_open=True), metavar="USD",
              help="Stop cleanly before spending more than this (whole run, resumes included). "
                   "Exit code 3; continue with --resume and a larger budget.")
@click.option("--dry-run", is_flag=True, help="Print the calls, tokens and cost a run would take; call nothing.")
@click.option("--batch", is_flag=True, help="Run every model stage through the OpenAI Batch API or Anthropic "
                                            "Message Batches (50%% cheaper, results within 24 h).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="A shared call cache: calls any earlier run made there are reused, free.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Continue the run in this directory (killed, interrupted or stopped at its budget).")
@click.option("--debug", is_flag=True, help="One record at a time, every request and response printed in full "
                                            "(and kept in RUN_DIR/debug.log).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="The run directory, exactly (must not exist or be empty). Default: outputs/<timestamp>.")
@click.option("--push-to-hub", "hub_repo", metavar="REPO", help="Then push the datasets and card to this Hugging Face "
              "dataset repo (private; needs HF_TOKEN or `hf auth login`).")
@click.option("--executor", type=click.Choice(["local", "ray"]), help="local (default): this process. ray: the input "
              "in shards on a Ray cluster, merged into one run directory like a local run's.")
@click.option("--ray-address", metavar="ADDR", help="With --executor ray: the cluster to join (default: start Ray here).")
@click.option("--workers", type=click.IntRange(min=1), help="With --executor ray: shards run at once (default: the "
              "cluster's CPUs); --concurrency and rate limits are split between them.")
@click.option("--shards", type=click.IntRange(min=1), help="With --executor ray: shards to split the input into "
              "(default: one per worker, or one per 1000 prompts if more).")
def run(config: Path | None, prompts: list[InputSource] | None, limit: int | None, model: str | None,
        concurrency: int | None, rpm: float | None, tpm: float | None, seed: int | None, max_cost: float | None,
        dry_run: bool, batch: bool, cache_dir: Path | None, resume_dir: Path | None, debug: bool, out: Path | None, hub_repo: str | None,
        executor: str | None, ray_address: str | None, workers: int | None, shards: int | None) -> int:
    """Run a pipeline: questions, answers, critique and revision, then datasets.

    CONFIG is a pipeline YAML file (default: pipelines/default.yaml, sized for the embedded model;
    pipelines/api.yaml is sized for an API model). Every input is validated before the run
    directory is created. The last line printed is the run directory. Exit codes: 0 done,
    1 done with failures (see failed.jsonl), 2 bad input, 3 stopped at --max-cost.
    """
    from factory.engine.pipeline import Overrides, Pipeline
    from factory.executors import dispatch

    if (ray_address or workers or shards) and executor != "ray" and resume_dir is None:
        raise FactoryError("--ray-address, --workers and --shards go with --executor ray")
    if debug:
        concurrency = 1
    if hub_repo:
        from factory.export.hub import require_token

        require_token()  # before any work, not after it
    if resume_dir is not None:
        given = {"CONFIG": config, "--prompts": prompts, "--limit": limit, "--model": model, "--seed": seed,
                 "--batch": batch or None, "--out": out, "--dry-run": dry_run or None, "--executor": executor,
                 "--shards": shards}
        clash = [name for name, value in given.items() if value is not None]
        if clash:
            raise FactoryError(f"--resume continues a run exactly as it started; drop {', '.join(clash)} "
                               "(only --max-cost, --concurrency, --rpm, --tpm, --cache-dir and --debug may change, "
                               "and --ray-address and --workers for a Ray run)")
        ov = Overrides(concurrency=concurrency, max_cost=max_cost, cache_dir=cache_dir, rpm=rpm, tpm=tpm)
        outcome = dispatch.resume(resume_dir, stderr, ov, debug=debug, ray_address=ray_address, workers=workers)
        return print_outcome(stdout, outcome, hub_repo)
    ov = Overrides(prompts=prompts, limit=limit, model=model, concurrency=concurrency, seed=seed, max_cost=max_cost,
                   cache_dir=cache_dir, rpm=rpm, tpm=tpm)
    pipe = Pipeline.prepare(load_config(config), ov)
    if dry_run:
        from factory.engine.estimate import estimate, estimate_table

        stdout.print(estimate_table(estimate(pipe, batch), batch, pipe.cfg.retries.parse_attempts))
        return 0
    outcome = dispatch.run(pipe, out, stderr, executor=executor, batch=batch, debug=debug, address=ray_address,
                           workers=workers, shards=shards)
    return print_outcome(stdout, outcome, hub_repo)


@cli.command("retry-failed")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--max-cost", type=click.FloatRange(min=0, min_open=True), metavar="USD",
              help="Budget for the whole run, as for `run`.")
@click.option("--concurrency", type=click.IntRange(min=1), help="Requests in flight per model endpoint.")
def retry_failed(run_dir: Path, max_cost: float | None, concurrency: int | None) -> int:
    """Reprocess only the failed records of RUN_DIR (those in its failed.jsonl), then rewrite its
    datasets. Completed calls come from the call log, so nothing is paid twice."""
    from factory.engine.pipeline import Overrides
    from factory.executors.dispatch import resume

    return print_outcome(stdout, resume(run_dir, stderr, Overrides(concurrency=concurrency, max_cost=max_cost),
                                 retry_failed=True))


@cli.command("try")
@click.argument("prompt")
@click.option("--constitution", type=click.Path(dir_okay=False, path_type=Path),
              help=f"Constitution YAML (default: {DEFAULT_CONSTITUTION.relative_to(DEFAULT_CONFIG.parent.parent)}).")
@click.option("--model", help="Model spec (default: the default pipeline's, local:smollm2).")
@click.option("--rounds", type=click.IntRange(1, 4), help="Critique/revision rounds (default 1).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the principle draw and sampling.")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path),
              help="Pipeline config whose answer and critique settings to use (default: the default pipeline).")
@click.option("--system", help="A system prompt for the dialogue.")
@click.option("--turn", "turns", multiple=True, metavar="ROLE:TEXT", help="An earlier turn (user:... or assistant:...), "
              "in order; PROMPT is the user's last turn.")
def try_(prompt: str, constitution: Path | None, model: str | None, rounds: int | None, seed: int,
         config: Path | None, system: str | None, turns: tuple[str, ...]) -> None:
    """Run one PROMPT (or a dialogue ending with it) through answer, critique and revision, and print every step.

    Ends with a word diff between the first answer and the final revision. Calls are cached
    (in $FACTORY_CACHE_DIR or ~/.cache/constitution-factory), so after editing one principle
    only the calls that used it run again.
    """
    from factory.commands.tryout import try_prompt

    try_prompt(prompt, config, constitution, model, rounds, seed, stdout, system=system, turns=turns)


@cli.command("judge-check")
@click.option("--model", required=True, help="The judge's model spec, e.g. local:smollm2 or openai:gpt-4o-mini.")
@click.option("--pairs", type=click.Path(dir_okay=False, path_type=Path),
              help="JSONL of {prompt, better, worse, criterion} (default: evals/judge_check.jsonl, 24 pairs).")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path),
              help="Pipeline config whose stages.judge settings to use (default: the default pipeline's).")
@click.option("--method", type=click.Choice(["choice", "cot", "score"]), help="Override the judging method.")
@click.option("--samples", type=click.IntRange(1, 16), help="Verdicts sampled where the backend gives no logprobs.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def judge_check_(model: str, pairs: Path | None, config: Path | None, method: str | None, samples: int | None,
                 as_json: bool) -> None:
    """How good is a judge? Accuracy and position consistency on pairs with a clearly better answer,
    each judged in both orders, before you pay for a run. Calls are cached between checks."""
    from factory.commands.judgecheck import DEFAULT_SET, judge_check, to_json
    from factory.commands.show import judge_check_table

    report = judge_check(model, pairs or DEFAULT_SET, config=config, method=method, samples=samples)
    if as_json:
        stdout.print(to_json(report), markup=False, highlight=False, soft_wrap=True)
    else:
        stdout.print(judge_check_table(model, report))


@cli.command("revision-check")
@click.argument("triples", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def revision_check_(triples: Path | None, as_json: bool) -> None:
    """How well do the revision gates work? Each gate's precision and recall on (prompt, answer,
    revision) triples labelled better / worse / off_topic / critique by reading them (TRIPLES,
    default: evals/revision_check.jsonl). No model is called: the gates are deterministic."""
    import json

    from rich.table import Table

    from factory.commands.revisioncheck import DEFAULT_SET, GATES, revision_check

    report = revision_check(triples or DEFAULT_SET)
    if as_json:
        stdout.print(json.dumps(report, indent=2), markup=False, highlight=False, soft_wrap=True)
        return
    table = Table(title=f"Revision gates on {report['triples']} labelled triples")
    for col in ("gate", "flagged", "precision", "recall"):
        table.add_column(col, justify="left" if col == "gate" else "right")
    for gate in GATES:
        g = report[gate]
        table.add_row(gate, str(g["flagged"]), str(g["precision"]), str(g["recall"]))
    stdout.print(table)
    stdout.print("labels: " + ", ".join(f"{k} {v}" for k, v in report["labels"].items()), highlight=False)
    a = report["all_gates"]
    stdout.print(f"all gates: {a['bad_caught']} of off_topic + critique revisions caught, "
                 f"{a['better_dropped']} of better ones dropped, {a['worse_dropped']} of worse ones dropped",
                 highlight=False)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--samples", type=click.IntRange(min=0), default=3, show_default=True, help="Records to show in full.")
@click.option("--seed", type=int, default=0, show_default=True, help="Which records are drawn.")
@click.option("--jsonl", is_flag=True, help="Instead, print the whole lineage: every done and dropped record as JSON lines.")
def inspect(run_dir: Path, samples: int, seed: int, jsonl: bool) -> None:
    """What RUN_DIR made and dropped (counts and reasons per stage, the judge's quality report), and a
    few records in full: prompt, answers, critiques, revisions, the judge's verdicts and fact verdicts."""
    if (run_dir / "loop.json").is_file():  # a `factory loop` directory: its per-round table
        from factory.loop.table import print_loop

        print_loop(run_dir, stdout)
        return
    from factory.commands.inspect_run import inspect_run

    inspect_run(run_dir, stdout, samples, seed, jsonl)


@cli.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Where to write it "
              "(default: RUN_DIR/report.html).")
def report_(run_dir: Path, out: Path | None) -> None:
    """Write RUN_DIR/report.html: one self-contained page (no network needed to view it) with the run's
    config, constitution and models, funnels per stage, plots (answer lengths, judge margins and
    consistency, fact scores, cost and throughput), per-principle tables and a sample of records.
    `factory run` writes it at the end of every run."""
    from factory.report import write_report

    stdout.print(str(write_report(run_dir, out)), markup=False, highlight=False, soft_wrap=True)


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The merged dataset folder (must not exist or be empty).")
@click.option("--push-to-hub", "hub_repo", metavar="REPO", help="Then push it to this Hugging Face dataset repo (private).")
def merge(run_dirs: tuple[Path, ...], out: Path, hub_repo: str | None) -> None:
    """Merge finished runs into one dataset, deduplicated across runs (the first run listed wins), with a
    card naming every source run. Export settings come from the first run's config."""
    from factory.export.merge import merge as merge_runs

    if hub_repo:
        from factory.export.hub import require_token

        require_token()
    counts, st = merge_runs(list(run_dirs), out)
    dropped = ", ".join(f"{k}: {v}" for k, v in st["dropped"].items()) or "none"
    rows = ", ".join(f"{name}: " + "/".join(f"{n} {s}" for s, n in c.items()) for name, c in counts.items())
    stdout.print(f"{st['in']} records in, dropped {dropped}\ndatasets: {rows}", markup=False, highlight=False)
    if hub_repo:
        from factory.export.hub import push

        stdout.print(f"pushed to {push(out, hub_repo)}", markup=False, highlight=False)
    stdout.print(str(out), markup=False, highlight=False)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port on 127.0.0.1 (0: any free port).")
def review(run_dir: Path, port: int) -> None:
    """Review RUN_DIR in the browser: a local web app on 127.0.0.1 (nothing leaves the machine).

    Filter records by principle, outcome, judge margin, fact verdict or drop reason; read each one's
    prompt, answers, critiques and revisions (word diffs), the judge's verdicts in both orders and the
    fact verdicts with evidence; accept, reject or edit it. Decisions are saved in RUN_DIR/review.sqlite;
    `factory export RUN_DIR` (and every later export of the run) applies them. Ctrl-C stops the server.
    """
    from factory.review.server import serve

    serve(run_dir, port, lambda url: stdout.print(f"reviewing {run_dir} at {url}  (Ctrl-C to stop)", markup=False,
                                                   highlight=False, soft_wrap=True))


@cli.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
def export_(run_dir: Path) -> None:
    """Write RUN_DIR's datasets and card again from its records, applying the review decisions saved by
    `factory review` (rejected records leave, edited answers replace the model's). Atomic."""
    from factory.review.reexport import reexport

    counts, st = reexport(run_dir)
    dropped = ", ".join(f"{k}: {v}" for k, v in st["dropped"].items()) or "none"
    rows = ", ".join(f"{name}: " + "/".join(f"{n} {s}" for s, n in c.items()) for name, c in counts.items())
    stdout.print(f"{st['in']} records in, dropped {dropped}\ndatasets: {rows}", markup=False, highlight=False)
    stdout.print(str(run_dir), markup=False, highlight=False, soft_wrap=True)



from factory.commands.constitution_cli import constitution  # noqa: E402 - registered below
from factory.commands.eval_cli import eval_  # noqa: E402
from factory.commands.loop_cli import loop  # noqa: E402
from factory.commands.pick import pick_  # noqa: E402
from factory.commands.train_cli import train_  # noqa: E402
from factory.evals.cli import evals, redteam  # noqa: E402

cli.add_command(constitution)
cli.add_command(eval_)
cli.add_command(train_)
cli.add_command(evals)
cli.add_command(redteam)
cli.add_command(loop)
cli.add_command(pick_)


def run_cli(args: list[str] | None = None) -> int:
    """The one place exit codes are decided: a command's return value (a run's outcome), click's own for
    usage errors, and for every failure a message and a documented exit code (factory.failures), never a
    traceback: that goes to the run's debug.log (or the cache folder's last-error.log)."""
    from factory.failures import classify, log_traceback

    try:
        code = cli.main(args, standalone_mode=False, prog_name="factory")
    except click.exceptions.Abort:
        stderr.print("aborted")
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as e:  # noqa: BLE001 - the one place that turns every error into a message
        failure = classify(e)
        log = getattr(e, "debug_log", None)
        if failure.internal and log is None:
            from factory.config import cache_root

            log = log_traceback(e, cache_root() / "last-error.log")
        message = failure.message if isinstance(e, KeyboardInterrupt) else f"error: {failure.message}"
        if getattr(e, "run_dir", None) is not None:
            message = message.replace("RUN_DIR", str(e.run_dir))
        if log is not None and failure.internal:
            message += f"\n(the traceback is in {log}; please report it)"
        try:
            stderr.print(message, markup=False, highlight=False, soft_wrap=True)
        except OSError:
            pass
        return failure.exit_code
    return code if isinstance(code, int) else 0


def main() -> None:
    sys.exit(run_cli())
