"""`factory constitution`: lint, import (llm-swarm files) and discover (principles from preference data)."""

from __future__ import annotations

from pathlib import Path

import click
import yaml

from factory.commands.show import stderr, stdout
from factory.constitution import import_llm_swarm, load_constitution, sanitise_id
from factory.errors import FactoryError


@click.group()
def constitution() -> None:
    """Check, convert and discover constitution files."""


@constitution.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def lint(files: tuple[Path, ...]) -> None:
    """Validate constitution FILES: schema, unknown keys, duplicate ids, example references.

    Prints one line per valid file, plus warnings (for example, no few-shot example that needed
    no change). Exits 2 at the first invalid file, naming the file, the line and the field.
    """
    for f in files:
        c = load_constitution(f)
        stdout.print(f"{f}: ok ({c.label}, {len(c.principles)} principles, {len(c.examples)} examples, "
                  f"sha256 {c.digest[:12]})", markup=False, highlight=False)
        for w in c.warnings():
            stdout.print(f"{f}: warning: {w}", markup=False, highlight=False)


@constitution.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "dest", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the constitution YAML.")
@click.option("--name", help="Constitution name (default: from the output file name).")
def import_(file: Path, dest: Path, name: str | None) -> None:
    """Convert an llm-swarm CAI JSON file ({"constitutions": [{critic, revision}], "system_chat": [...]})."""
    if name is not None and sanitise_id(name, "") != name:
        raise FactoryError(f"--name {name!r}: a constitution name is lower-case letters, digits, '-' and '_' "
                           f"(e.g. {sanitise_id(name)})")
    data = import_llm_swarm(file, name or dest.stem)
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100))
        tmp.replace(dest)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise FactoryError(f"--out {dest}: cannot write it ({e.strerror}); give a path in an existing, "
                           "writable folder") from None
    stdout.print(f"{dest}: {len(data['principles'])} principles, {len(data['examples'])} examples", markup=False)


@constitution.command()
@click.argument("prefs", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The constitution YAML to write, e.g. constitutions/NAME.yaml (must not exist).")
@click.option("--model", help="Proposer, judge and writer model spec (default: the config's, local:smollm2).")
@click.option("--seed-constitution", type=click.Path(dir_okay=False, path_type=Path),
              help="Also test this constitution's principles (their `judge` texts) the same way.")
@click.option("--proposals", "proposal_pairs", type=click.IntRange(min=0), default=32, show_default=True,
              help="Pairs the model explains with candidate principles (0: test the seed constitution only).")
@click.option("--per-pair", type=click.IntRange(1, 10), default=3, show_default=True, help="Principles asked per pair.")
@click.option("--max-candidates", type=click.IntRange(min=1), default=16, show_default=True,
              help="Most-proposed principles (after merging near-duplicates) tested.")
@click.option("--heldout", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.3, show_default=True,
              help="Share of prompts held out for testing (the split is by prompt).")
@click.option("--max-heldout", type=click.IntRange(min=1), default=200, show_default=True, help="Held-out pairs used at most.")
@click.option("--min-heldout", type=click.IntRange(min=1), default=10, show_default=True,
              help="Fewer held-out pairs than this is an error.")
@click.option("--margin", type=click.FloatRange(0, 0.5, max_open=True), default=0.05, show_default=True,
              help="Kept when agreement >= 0.5 + margin and its 95%% interval is above 0.5.")
@click.option("--name", help="Constitution name (default: from --out).")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path),
              help="Pipeline config for judge settings, templates, prices and concurrency (default: the default).")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for calls.sqlite (the cache), discover.json and report.html (default: outputs/discover-NAME).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the split, the sample and sampling.")
@click.option("--max-cost", type=click.FloatRange(min=0, min_open=True), metavar="USD", help="Stop before spending more.")
@click.option("--dry-run", is_flag=True, help="Print the calls and USD of proposal, testing and writing; call nothing.")
def discover(prefs: Path, out: Path, model: str | None, seed_constitution: Path | None, proposal_pairs: int, per_pair: int,
             max_candidates: int, heldout: float, max_heldout: int, min_heldout: int, margin: float, name: str | None,
             config: Path | None, work: Path | None, seed: int, max_cost: float | None, dry_run: bool) -> int:
    """Discover the principles that explain a preference dataset, test each as a judge on held-out pairs,
    and write the kept ones as a constitution (Inverse Constitutional AI).

    PREFS: a JSONL or Parquet file of prompt/chosen/rejected (strings or TRL message lists), a run
    directory, or a Hugging Face dataset folder. Prints the table, then the constitution's path (exit 0),
    or exits 1 when no principle beat chance by the margin (report.html says why).
    """
    from factory.discover.run import Settings, dry_run_table, plan, run

    s = Settings(model=model, config=config, name=name, proposal_pairs=proposal_pairs, per_pair=per_pair,
                 max_candidates=max_candidates, heldout=heldout, max_heldout=max_heldout, min_heldout=min_heldout,
                 margin=margin, seed=seed, max_cost=max_cost)
    p = plan(prefs, out, s, seed_constitution, work)
    if dry_run:
        stdout.print(dry_run_table(p))
        return 0
    summary = run(p, stdout)
    stdout.print(f"report: {summary['report']}", markup=False, highlight=False, soft_wrap=True)
    if summary["constitution"] is None:
        stderr.print("no principle beat chance by the margin; no constitution written", markup=False)
        return 1
    stdout.print(summary["constitution"], markup=False, highlight=False, soft_wrap=True)
    return 0
