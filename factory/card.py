"""The dataset card's body: what was made, from what, by which models, and what was dropped."""

from __future__ import annotations

import json

from factory.constitution import Constitution


def card_body(run_name: str, manifest: dict, constitution: Constitution, counts: dict, stats: dict,
              example: dict | None) -> str:
    lines = [
        f"# {run_name}",
        "",
        "Constitutional-AI data made by Constitution Factory:"
        " each prompt was answered, the answer critiqued against a principle drawn from the constitution and"
        " revised. `sft` trains on the prompt and the final revision (TRL conversational `messages`); `prefs`"
        " prefers the final revision over the initial answer (TRL explicit-prompt `prompt`/`chosen`/`rejected`).",
        "",
        "```python",
        "from datasets import load_dataset",
        f'sft = load_dataset("{run_name}", "sft")',
        f'prefs = load_dataset("{run_name}", "prefs")',
        "```",
        "",
        "## Rows",
        "",
        "| config | " + " | ".join(next(iter(counts.values()), {}).keys()) + " |",
        "|---|" + "---|" * len(next(iter(counts.values()), {})),
    ]
    lines += [f"| {name} | " + " | ".join(str(n) for n in c.values()) + " |" for name, c in counts.items()]
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
        f"- seed: {manifest['seed']}; critique/revision rounds: {cfg['stages']['critique_revise']['rounds']};"
        f" candidates per prompt: {cfg['stages']['answer']['candidates']}",
        f"- stage parameters: `{json.dumps({k: v for k, v in cfg['stages'].items() if k != 'export'})}`",
        f"- factory commit: `{manifest.get('git_commit')}`; packages: `{json.dumps(manifest['packages'])}`",
        "",
        "## Drops",
        "",
        "| stage | in | out | dropped |",
        "|---|---|---|---|",
    ]
    for name, st in stats["stages"].items():
        dropped = ", ".join(f"{k}: {v}" for k, v in st["dropped"].items()) or "none"
        lines.append(f"| {name} | {st['in']} | {st['out']} | {dropped} |")
    lines += [
        "",
        "Full per-record lineage (every call, template hash, principle, critique and revision) is in"
        " `records.jsonl` of the run directory; every model call is in `calls.sqlite`.",
        "",
        "## License",
        "",
        "Generated text follows the terms of the generator model(s) above; the shipped embedded model"
        " (SmolLM2-135M-Instruct) is Apache-2.0.",
    ]
    if example:
        lines += ["", "## Example `prefs` row", "", "```json", json.dumps(example, indent=2, ensure_ascii=False), "```"]
    return "\n".join(lines) + "\n"
