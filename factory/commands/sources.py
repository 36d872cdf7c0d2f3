"""The prompt-source flags of `factory run`: --prompts (repeatable) with its column mapping, and per
source a kind and a mixing weight. They become config.InputSource objects, passed on as `prompts`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from factory.config import InputSource
from factory.errors import FactoryError

MAPPING = {"--prompt-column": "prompt_column", "--messages-column": "messages_column",
           "--text-column": "text_column", "--system-column": "system_column", "--split": "split",
           "--subset": "subset", "--format": "format"}
PER_SOURCE = {"--kind": "kind", "--weight": "weight"}


def prompt_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Adds the flags; the command receives `prompts`: the sources, or None without --prompts."""

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        paths = kwargs.pop("prompts")
        mapping = {f: kwargs.pop(f) for f in MAPPING.values()}
        per_source = {f: kwargs.pop(f) for f in PER_SOURCE.values()}
        kwargs["prompts"] = sources(paths, mapping, per_source)
        return command(**kwargs)

    options = [
        click.option("--prompts", multiple=True, type=click.Path(path_type=Path),
                     help="Prompts instead of question generation: a JSONL file (one object per line: 'prompt' or "
                          "'messages', optional 'system'; other fields kept as metadata), a Parquet file, or a "
                          "Hugging Face dataset folder. Repeat to mix several. Streamed: any size."),
        click.option("--prompt-column", help="Column holding a plain prompt (default: prompt)."),
        click.option("--messages-column", help="Column holding a list of {role, content} turns (default: messages)."),
        click.option("--text-column", help="Column holding a dialogue in the \\n\\nHuman: ...\\n\\nAssistant: layout."),
        click.option("--system-column", help="Column holding a system prompt (default: system)."),
        click.option("--split", help="Dataset split (default: train, or the only one)."),
        click.option("--subset", help="Dataset config name, where the dataset has several."),
        click.option("--format", type=click.Choice(["auto", "jsonl", "parquet", "dataset"]),
                     help="How to read --prompts (default: from the name: .parquet, a folder, else JSONL)."),
        click.option("--kind", multiple=True, help="Kind of the prompts that carry none (red_team, helpful, ...): "
                     "once for every --prompts, or once per --prompts in order."),
        click.option("--weight", multiple=True, type=click.FloatRange(min=0, min_open=True),
                     help="Mixing ratio of each --prompts, in order (all or none)."),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def sources(paths: tuple[Path, ...], mapping: dict[str, Any], per_source: dict[str, tuple]) -> list[InputSource] | None:
    """One InputSource per path. A mapping flag applies to every path; --kind and --weight are given
    once for all of them or once each."""
    if not paths:
        given = [flag for flag, f in {**MAPPING, **PER_SOURCE}.items() if (mapping | per_source)[f]]
        if given:
            raise FactoryError(f"{', '.join(given)} go with --prompts")
        return None
    out = []
    for name, values in per_source.items():
        if len(values) not in (0, 1, len(paths)):
            raise FactoryError(f"--{name} is given {len(values)} times for {len(paths)} --prompts: give it once "
                               "for all of them, or once for each")
    for i, path in enumerate(paths):
        fields = {f: v for f, v in mapping.items() if v is not None}
        for name, values in per_source.items():
            if values:
                fields[name] = values[i] if len(values) > 1 else values[0]
        out.append(InputSource(path=str(path.resolve()), **fields))
    return out
