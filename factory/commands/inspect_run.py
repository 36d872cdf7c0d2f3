"""`factory inspect RUN_DIR`: what a run made and dropped, and a few records from prompt to verdict."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from factory.engine.progress import judge_table
from factory.engine.rundir import RunDir
from factory.errors import FactoryError


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FactoryError(f"{path.parent}: no {path.name} (is this a finished run directory?)") from None


def inspect_run(run_dir: Path, console: Console, samples: int = 3, seed: int = 0, jsonl: bool = False) -> None:
    """`jsonl`: print the run's lineage (its records, kept in state.sqlite) as JSON lines, streamed."""
    manifest, stats = _load(run_dir / "manifest.json"), _load(run_dir / "stats.json")
    if jsonl:
        for line in RunDir(run_dir, manifest).lineage_json():
            sys.stdout.write(line.rstrip("\n") + "\n")
        return
    c = manifest.get("constitution", {})
    console.print(f"[bold]{run_dir}[/bold]: {manifest['status']}, models {', '.join(manifest.get('models', []))}, "
                  f"constitution {c.get('label')} ({str(c.get('sha256', ''))[:12]}), "
                  f"spent ${stats.get('spent_usd', 0):.4f} (saved ${stats.get('saved_usd', 0):.4f} by cached calls)",
                  highlight=False)
    table = Table(title="Datasets")
    table.add_column("config")
    table.add_column("rows per split")
    for name, counts in stats.get("datasets", {}).items():
        table.add_row(name, ", ".join(f"{split}: {n}" for split, n in counts.items()))
    console.print(table)
    drops = Table(title="Stages and drop reasons")
    for col in ("stage", "in", "out", "dropped", "counters"):
        drops.add_column(col)
    for name, st in stats["stages"].items():
        dropped = ", ".join(f"{k}: {v}" for k, v in st["dropped"].items()) or "-"
        counters = ", ".join(f"{k}: {v}" for k, v in st.get("counters", {}).items()) or "-"
        drops.add_row(name, str(st["in"]), str(st["out"]), dropped, counters)
    console.print(drops)
    if stats.get("judge_quality"):
        console.print(judge_table(stats["judge_quality"]))
    if stats.get("failed_records"):
        console.print(f"[red]{stats['failed_records']} failed record(s)[/red]: see {run_dir / 'failed.jsonl'}")
    # a reservoir sample: the run's records are streamed, never all held
    pool: list[dict] = []
    rng = random.Random(seed)
    for n, line in enumerate(RunDir(run_dir, manifest).lineage_json(kept=True)):
        if len(pool) < samples:
            pool.append(json.loads(line))
        elif (k := rng.randrange(n + 1)) < samples:
            pool[k] = json.loads(line)
    for rec in pool:
        console.print(record_panel(rec))


def record_panel(rec: dict) -> Panel:
    """One record: prompt, each candidate's answer, critiques and revisions, the judge's pairs, fact verdicts."""
    lines = [f"[bold]prompt[/bold] ({rec['source']}): {rec['prompt']}"]
    for cand in rec.get("candidates", []):
        lines.append(f"\n[bold]answer [{cand['index']}][/bold]: {cand['answer']}")
        for n, rnd in enumerate(cand.get("rounds", []), 1):
            lines.append(f"[cyan]critique r{n} ({rnd['principle_id']})[/cyan]: {rnd['critique']}")
            lines.append(f"[green]revision r{n}[/green]{' (no change)' if rnd['noop'] else ''}: {rnd['revision']}")
    j = rec.get("judgement")
    if j:
        for pair in j.get("pairs", []):
            chosen, rejected = j["options"][pair["chosen"]], j["options"][pair["rejected"]]
            lines.append(f"\n[magenta]judge {pair['judge_model']}[/magenta]: prefers [{chosen['candidate']}] "
                         f"{chosen['kind']} over [{rejected['candidate']}] {rejected['kind']}, "
                         f"p={pair['p_chosen']:.3f}, consistent={pair['consistent']}, "
                         f"principles {', '.join(pair['principle_ids'])}")
        if not j.get("pairs"):
            lines.append("\n[magenta]judge[/magenta]: no pair (tie, single option or unreadable verdicts)")
    for check in rec.get("facts") or []:
        for claim in check.get("claims", []):
            lines.append(f"[yellow]fact[/yellow] {claim.get('verdict')}: {claim.get('text')}")
    return Panel("\n".join(lines), title=f"record {rec['id']}", title_align="left")
