"""Stages: small units, records in, records out. Dependencies come in through the constructor;
model calls go through the runner's Caller. A stage drops a record by setting `record.dropped`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from factory.engine.caller import Caller
from factory.models import GenParams
from factory.prompts import Template
from factory.records import Drop, Record


class Stage(ABC):
    name: ClassVar[str]

    @abstractmethod
    async def process(self, record: Record, caller: Caller) -> None:
        """Advance one record in place (add candidates, rounds, lineage), or drop it."""

    def drop(self, record: Record, reason: str, detail: str = "") -> None:
        record.dropped = Drop(stage=self.name, reason=reason, detail=detail)


def params(cfg, seed: int) -> GenParams:
    return GenParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=seed)


# How a stage's work reaches the datasets (factory/export/rows.py): `base` (the answers every row starts
# from), `default` (the default rows use it: revisions), `rank` (replaces the default pairs: the judge),
# `annotate` (adds columns to the default rows: fact scores), `own` (replaces every row of a record it
# labelled: idk, fact-check `prefer`).
RowsKind = Literal["base", "default", "rank", "annotate", "own"]


@dataclass
class Loaded:
    """What a stage needs from disk, loaded (and so validated) before a run starts."""

    templates: dict[str, Template] = field(default_factory=dict)
    extra: Any = None  # anything else: the idk declines, the judge's teacher


@dataclass(frozen=True)
class StageEntry:
    """A record stage as the pipeline sees it. `name` is also its section under `stages:` in the config.
    `load(prompts_dir, section)`: its templates and other inputs; `build(pipeline, section)`: the stage;
    `rows(section)`: how it contributes rows; `feeds`: stages whose output its own rows use."""

    name: str
    load: Callable[[Path, Any], Loaded]
    build: Callable[[Any, Any], Stage]
    rows: Callable[[Any], RowsKind] = lambda section: "default"
    feeds: frozenset[str] = frozenset()
