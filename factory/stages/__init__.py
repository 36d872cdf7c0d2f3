"""Stages: small units, records in, records out. Dependencies come in through the constructor;
model calls go through the runner's Caller. A stage drops a record by setting `record.dropped`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from factory.engine.caller import Caller
from factory.models import GenParams
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
