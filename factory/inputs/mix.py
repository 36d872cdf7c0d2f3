"""Prompts from several sources at once, each with its own column mapping and `kind`, mixed at the
ratio their weights give.

Without weights the sources follow one another. With weights, the mix is the largest one that keeps
the ratio (or --limit prompts, if fewer): source i gives round(N x w_i / sum w) of its distinct prompts,
its first ones, interleaved so that any prefix of the stream keeps the ratio (a run stopped early, or
cut by --limit, is still mixed as asked). Rows not taken are counted as `not_in_mix`, duplicates
(also across sources) as `duplicate_prompt`: every row is accounted for."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from factory.config import InputSource
from factory.errors import FactoryError
from factory.inputs.source import PromptFile
from factory.records import Record

DUPLICATE, SURPLUS = "duplicate_prompt", "not_in_mix"


class Prompts:
    """Validated prompt sources. Iterating yields (record, reason): reason None for a record to
    process, else why the row is dropped. `count` rows in all; `duplicates` of them repeat a prompt."""

    def __init__(self, sources: list[InputSource], resolve: Callable[[str], Path], limit: int | None = None):
        if not sources:
            raise FactoryError("no prompt sources")
        weighted = [s.weight is not None for s in sources]
        if any(weighted) and not all(weighted):
            raise FactoryError("give every prompt source a weight (its mixing ratio), or none")
        self.sources, self.limit, self.weighted = sources, limit, all(weighted)
        self.files = [PromptFile(resolve(s.path), "file", None if self.weighted else limit, s) for s in sources]
        self._tag = len(sources) > 1  # lineage: which source each record came from
        ids = np.concatenate([f.ids for f in self.files])
        dup = np.ones(len(ids), dtype=bool)
        dup[np.unique(ids, return_index=True)[1]] = False  # the first of equal prompts, in source order
        bounds = np.cumsum([0] + [f.count for f in self.files])
        self._dup = [dup[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        self.quotas = self._quotas() if self.weighted else None
        total = sum(f.count for f in self.files)
        self.count = total if self.weighted or limit is None else min(total, limit)

    @property
    def paths(self) -> list[Path]:
        return [f.path for f in self.files]

    @property
    def duplicates(self) -> int:
        """Rows (of the `count` read) that repeat an earlier prompt."""
        return int(np.concatenate(self._dup)[: self.count].sum())

    @property
    def records(self) -> int:
        """The records the rows give: the mix's quotas, or every row read that is not a duplicate."""
        return sum(self.quotas) if self.quotas is not None else self.count - self.duplicates

    def _quotas(self) -> list[int]:
        weights = [s.weight or 0.0 for s in self.sources]
        shares = [w / sum(weights) for w in weights]
        distinct = [int((~d).sum()) for d in self._dup]
        n = min(math.floor(u / s + 1e-9) for u, s in zip(distinct, shares, strict=True))
        if self.limit is not None:
            n = min(n, self.limit)
        exact = [s * n for s in shares]
        quotas = [math.floor(x) for x in exact]
        by_remainder = sorted(range(len(exact)), key=lambda i: (quotas[i] - exact[i], i))
        for i in by_remainder[: n - sum(quotas)]:
            quotas[i] += 1
        return quotas

    def _rows(self, i: int) -> Iterator[tuple[Record, bool]]:
        for (rec, _), dup in zip(self.files[i], self._dup[i].tolist(), strict=True):
            if self._tag:
                rec.metadata.setdefault("input", self.files[i].path.name)
            yield rec, dup

    def __iter__(self) -> Iterator[tuple[Record, str | None]]:
        if self.quotas is None:
            n = 0
            for i in range(len(self.files)):
                for rec, dup in self._rows(i):
                    if n >= self.count:
                        return
                    n += 1
                    yield rec, DUPLICATE if dup else None
            return
        streams = [self._rows(i) for i in range(len(self.files))]
        taken = [0] * len(self.files)
        while open_ := [i for i, q in enumerate(self.quotas) if taken[i] < q]:
            i = min(open_, key=lambda j: ((taken[j] + 1) / self.quotas[j], j))
            for rec, dup in streams[i]:
                if dup:
                    yield rec, DUPLICATE
                    continue
                taken[i] += 1
                yield rec, None
                break
        for stream in streams:
            for rec, dup in stream:
                yield rec, DUPLICATE if dup else SURPLUS

    def mix(self) -> dict[str, dict]:
        """Per source: its path, kind, weight, rows and the records it gives (for the manifest)."""
        return {str(f.path): {"kind": s.kind, "weight": s.weight, "rows": f.count,
                              "taken": None if self.quotas is None else self.quotas[i]}
                for i, (f, s) in enumerate(zip(self.files, self.sources, strict=True))}
