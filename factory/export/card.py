"""The dataset card's body: what was made, from what, by which models, and what was dropped."""

from __future__ import annotations

import json
from pathlib import Path

from factory.constitution import Constitution


def paths(entry: dict | str) -> list[str]:
    """The files (or patterns) of one data_files entry: a string, or a dict whose `path` is one string or
    (a split in several files) a list."""
    found = entry.get("path") if isinstance(entry, dict) else entry
    return [found] if isinstance(found, str) else list(found or [])


def usage(name: str, counts: dict) -> list[str]:
    """How to load each config, and its rows per split (named as in the H4 datasets: `train_sft`, ...)."""
    lines = ["```python", "from datasets import load_dataset"]
    lines += [f'{config} = load_dataset("{name}", "{config}")  # splits: {", ".join(c)}' for config, c in counts.items()]
    lines += ["```", "", "## Rows", "", "| config | split | rows |", "|---|---|---|"]
    lines += [f"| {config} | {split} | {n} |" for config, c in counts.items() for split, n in c.items()]
    return lines


def drops_table(stats: dict) -> list[str]:
    lines = ["| stage | in | out | dropped |", "|---|---|---|---|"]
    for name, st in stats["stages"].items():
        dropped = ", ".join(f"{k}: {v}" for k, v in st["dropped"].items()) or "none"
        lines.append(f"| {name} | {st['in']} | {st['out']} | {dropped} |")
    return lines


def human_review(stats: dict) -> list[str]:
    """The card's "Human review" section, where a reviewer decided on any record (`factory review`)."""
    export = stats["stages"].get("export", {})
    counters, dropped = export.get("counters", {}), export.get("dropped", {})
    accepted, edited, rejected = (counters.get("human_accepted", 0), counters.get("human_edited", 0),
                                  dropped.get("human_rejected", 0))
    if not accepted + edited + rejected:
        return []
    return ["", "## Human review", "", "Decisions made in `factory review` (saved in `review.sqlite`) and applied at export:",
            "", "| decision | records |", "|---|---|", f"| accepted | {accepted} |",
            f"| edited (the reviewer's text replaces the model's final answer) | {edited} |",
            f"| rejected (left out of every dataset) | {rejected} |", "",
            "Rows of reviewed records say so in the `human_review` column (`accepted` or `edited`; null: not reviewed)."]


def card_body(run_name: str, manifest: dict, constitution: Constitution, counts: dict, stats: dict,
              example: dict | None) -> str:
    lines = [
        f"# {run_name}",
        "",
        "Constitutional-AI data made by Constitution Factory:"
        " each prompt was answered, the answer critiqued against a principle drawn from the constitution and"
        " revised. `sft` trains on the prompt and the final revision (TRL conversational `messages`); `prefs`"
        " prefers the final revision over the initial answer (TRL explicit-prompt `prompt`/`chosen`/`rejected`)."
        " Where a prompt ends a conversation, its system prompt and earlier turns come first in `messages` and"
        " `prompt`.",
        "",
        *usage(run_name, counts),
    ]
    lines += [
        "",
        "## Constitution",
        "",
        f"`{constitution.label}`, sha256 `{constitution.digest}`: {constitution.description.strip()}",
        "",
        "| principle | critique request |",
        "|---|---|",
    ]
    lines += [f"| `{p.id}` | {p.critique.replace('|', '/')} |" for p in constitution.principles]
    cfg = manifest["config"]
    lines += [
        "",
        "## Generation",
        "",
        f"- models: {', '.join(f'`{m}`' for m in manifest['models'])}",
        f"- seed: {manifest['seed']}; critique/revision rounds: {(cfg['stages']['critique_revise'] or {}).get('rounds', 0)};"
        f" candidates per prompt: {cfg['stages']['answer']['candidates']}",
        f"- stage parameters: `{json.dumps({k: v for k, v in cfg['stages'].items() if k != 'export'})}`",
        f"- factory commit: `{manifest.get('git_commit')}`; packages: `{json.dumps(manifest['packages'])}`",
        "",
        "## Drops",
        "",
        *drops_table(stats),
        "",
        "Export drops: quality filters, dedup (`dedup.jsonl` names each kept row and its dropped twins) and"
        " decontamination (`decontam.jsonl` gives the overlapping n-gram).",
        *human_review(stats),
    ]
    lines += [
        "",
        "Full per-record lineage (every call, template hash, principle, critique and revision) is in"
        " `state.sqlite` of the run directory (`factory inspect RUN_DIR --jsonl` prints it as JSON lines); every"
        " model call is in `calls.sqlite`.",
        "",
        "## License",
        "",
        "Generated text follows the terms of the generator model(s) above; the shipped embedded model"
        " (SmolLM2-135M-Instruct) is Apache-2.0.",
    ]
    if example:
        lines += ["", "## Example `prefs` row", "", "```json", json.dumps(example, indent=2, ensure_ascii=False), "```"]
    return "\n".join(lines) + "\n"


def merged_card(name: str, runs: list[tuple[Path, dict]], counts: dict, stats: dict, example: dict | None) -> str:
    """The card of `factory merge`: every source run with its constitution and models, then rows and drops."""
    lines = [f"# {name}", "", "Constitutional-AI data merged by Constitution Factory from the runs below, deduplicated"
             " across them (the first run listed wins). Each row's `constitution` and `generator_model` columns"
             " name its own origin.", "", *usage(name, counts), "", "## Source runs", "",
             "| run | constitution | sha256 | models | rows |", "|---|---|---|---|---|"]
    for run_dir, m in runs:
        rows = ", ".join(f"{k}: {sum(v.values())}" for k, v in m.get("datasets", {}).items())
        lines.append(f"| `{run_dir.name}` | `{m['constitution']['label']}` | `{m['constitution']['sha256'][:12]}` | "
                     f"{', '.join(m['models'])} | {rows} |")
    lines += ["", "## Drops", "", *drops_table({"stages": {"merge": stats}}),
              *human_review({"stages": {"export": stats}})]
    if example:
        lines += ["", "## Example `prefs` row", "", "```json", json.dumps(example, indent=2, ensure_ascii=False), "```"]
    return "\n".join(lines) + "\n"
