"""Cleaning before export: quality filters, dedup and decontamination over whole records.

A first pass over the records decides which to keep; export then writes only those. A record is
judged by its prompt and its SFT target (the text its `sft` row trains on): a record that fails
loses all its rows, with a counted reason. Dedup clusters and decontamination matches are written
to the run directory (`dedup.jsonl`, `decontam.jsonl`) so every drop can be traced to its kept twin
or to the evaluation text it overlapped.
"""

from __future__ import annotations

import json
import re
from array import array
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from factory.config import CleanConfig
from factory.hygiene import Decontaminator, NearDedup, check
from factory.hygiene.dedup import exact_duplicate_pairs
from factory.hygiene.spill import Column
from factory.records import Record, normalise

# Refusal openings, for the over-refusal check on benign prompts.
REFUSAL = re.compile(r"^\W*(?:i'?m sorry|sorry|i (?:can ?not|can't|won't|am unable|'m unable|am not able)|"
                      r"as an ai|i must decline|unfortunately,? i (?:can't|cannot))", re.IGNORECASE)


def sft_target(rows: Iterable[tuple[str, dict]]) -> str | None:
    """The assistant text of a record's `sft` row, if it has one."""
    for name, row in rows:
        if name == "sft":
            return row["messages"][-1]["content"]
    return None


def truncated(rec: Record, target: str) -> bool:
    """The call that wrote the target stopped at its token limit."""
    for cand in rec.candidates:
        if cand.answer == target:
            return cand.finish_reason == "length"
        for n, rnd in enumerate(cand.rounds, 1):
            if rnd.revision == target:
                if rnd.finish_reason is not None:
                    return rnd.finish_reason == "length"
                # a record written before rounds kept their finish reason: find the call by its name
                return any(c.finish_reason == "length" for c in rec.calls if c.purpose == f"revision[{cand.index}].r{n}")
    return False


def repeats_critique(rec: Record, target: str) -> bool:
    t = normalise(target)
    return len(t) >= 20 and any(t in normalise(r.critique) for c in rec.candidates for r in c.rounds)


class Cleaner:
    def __init__(self, cfg: CleanConfig, resolve: Callable[[str], Path]):
        self.cfg = cfg
        self.near = NearDedup(ngram=cfg.ngram, threshold=cfg.threshold) if cfg.near_dedup else None
        self.decontam: Decontaminator | None = None
        for ev in cfg.decontaminate:
            for field in ev.fields:
                d = Decontaminator.from_file(resolve(ev.path), field, n=cfg.decontam_ngram)
                self.decontam = d if self.decontam is None else self.decontam.merged(d)

    def quality(self, rec: Record, target: str) -> str | None:
        cfg = self.cfg
        if cfg.drop_truncated and truncated(rec, target):
            return "truncated"
        if not target.strip():
            return "empty"
        if cfg.drop_critique_repeats and repeats_critique(rec, target):
            return "repeats_critique"
        if (cfg.drop_over_refusal and rec.metadata.get("kind") in cfg.benign_kinds
                and REFUSAL.match(target)):
            return "over_refusal"
        return check(target, cfg.quality)

    def plan(self, records: Iterable[tuple[Record, str | None]], out: Path) -> Drops:
        """Drop reason by position, for (record, SFT target) pairs in export order (positions, not ids:
        merged runs can hold the same prompt twice). Writes dedup.jsonl (clusters: kept id, dropped ids,
        by what) and decontam.jsonl (id, matching n-gram). Texts, ids and dedup keys stay in files
        under `out`: memory holds two bytes per record (the drops) and a batch."""
        drops = Drops()
        prompts, targets = Column(out), Column(out)  # (position, id, text) of the records still in, on disk
        with (out / "decontam.jsonl").open("w") as matches:
            for position, (rec, target) in enumerate(records):
                reason = self.quality(rec, target) if target is not None else None
                if reason is None and self.decontam is not None:
                    hit = self.decontam.match(rec.dialogue_text) or (self.decontam.match(target) if target else None)
                    if hit:
                        reason = "decontaminated"
                        matches.write(json.dumps({"id": rec.id, "match": hit}) + "\n")
                if reason:
                    drops[position] = reason
                    continue
                prompts.add(position, rec.id, rec.dialogue_text)
                if target and not (rec.idk is not None and rec.idk.label == "decline"):  # declines repeat by design
                    targets.add(position, rec.id, target)
        with (out / "dedup.jsonl").open("w") as clusters:
            for field, items in (("prompt", prompts), ("response", targets)):
                self._dedup(field, items, drops, clusters, out)
                items.close()
        return drops

    def _dedup(self, field: str, column: Column, drops: Drops, out, folder: Path) -> None:
        """Exact, then near dedup of the texts of `column` still in; the first of each cluster stays.
        The texts stay on disk (hygiene/spill.py), and so do the hashes that find duplicates
        (hygiene/partition.py): memory grows with the duplicates found, not with the texts."""
        items = column.without(drops)
        for how, find in (("exact", exact_duplicate_pairs if self.cfg.exact_dedup else None),
                          ("near", self.near.duplicate_pairs if self.near else None)):
            if find is None:
                continue
            groups: dict[int, list[int]] = {}
            for i, kept in zip(*(a.tolist() for a in find(items.texts, folder)), strict=True):
                if items.positions[i] not in drops:
                    groups.setdefault(kept, []).append(i)
            for kept, dups in groups.items():
                for i in dups:
                    drops[items.positions[i]] = f"{how}_duplicate_{field}"
                out.write(json.dumps({"kept": items.ids[kept], "dropped": [items.ids[i] for i in dups],
                                      "by": how, "field": field}) + "\n")
        items.close()


class Drops:
    """Drop reasons by export position, in two bytes per position (a code into the reasons seen), so
    that a run's drops cost the same however many records are dropped. `in`, `[]`, `items()`."""

    def __init__(self) -> None:
        self._codes = array("H")
        self._reasons: list[str] = [""]  # code 0: not dropped
        self._index: dict[str, int] = {}

    def __setitem__(self, position: int, reason: str) -> None:
        code = self._index.get(reason)
        if code is None:
            code = self._index[reason] = len(self._reasons)
            self._reasons.append(reason)
        if position >= len(self._codes):
            self._codes.frombytes(bytes(2 * (position + 1 - len(self._codes))))
        self._codes[position] = code

    def __contains__(self, position: object) -> bool:
        return isinstance(position, int) and 0 <= position < len(self._codes) and self._codes[position] != 0

    def __getitem__(self, position: int) -> str:
        if position not in self:
            raise KeyError(position)
        return self._reasons[self._codes[position]]

    def items(self) -> Iterator[tuple[int, str]]:
        for position, code in enumerate(self._codes):
            if code:
                yield position, self._reasons[code]
