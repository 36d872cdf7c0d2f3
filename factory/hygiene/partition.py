"""Grouping equal keys of many texts in bounded memory: (key, index) pairs go to up to 256 temporary
files by key, so all pairs of one key land in one file, and each file is sorted in memory on its
own. Export's exact dedup and the MinHash band buckets use it, so that cleaning a million records
holds one partition at a time (16 or 24 bytes per pair, a 256th of the pairs), not arrays of n.

Hand-written: numpy's `unique` needs the whole array in memory (what export held before: 446 MB
of RSS at 10^6 records, against 187 MB at 10^4)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

NARROW = np.dtype([("key", np.uint64), ("index", np.int64)])
WIDE = np.dtype([("key", np.uint64), ("key2", np.uint64), ("index", np.int64)])
TARGET = 1 << 16  # pairs per partition aimed at
MAX_PARTS = 256


class Partitions:
    """`add` (keys, indices) in any number of calls, keys of 64 bits or (`wide`) 128 given as two
    arrays; then `repeated` yields, per partition, the indices of every key seen more than once.
    About `expected` pairs in all; the files go in `folder` (default: the system's temp folder)."""

    def __init__(self, expected: int, wide: bool = False, folder: Path | None = None):
        self.dtype = WIDE if wide else NARROW
        self.parts = int(min(MAX_PARTS, max(1, -(-expected // TARGET))))
        self.files = [tempfile.TemporaryFile(dir=folder) for _ in range(self.parts)]

    def add(self, keys: np.ndarray, indices: np.ndarray, keys2: np.ndarray | None = None) -> None:
        pairs = np.empty(len(keys), dtype=self.dtype)
        pairs["key"], pairs["index"] = keys, indices
        if self.dtype is WIDE:
            pairs["key2"] = keys2  # required when wide
        part = (keys >> np.uint64(56)).astype(np.int64) * self.parts >> 8  # the top byte: well mixed keys
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(self.parts + 1))
        for p in range(self.parts):
            if bounds[p] < bounds[p + 1]:
                self.files[p].write(pairs[order[bounds[p]:bounds[p + 1]]].tobytes())

    def repeated(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Per partition: (first, index) arrays for every pair whose key an earlier (smaller) index
        also has; `first` is the smallest index with that key."""
        for f in self.files:
            f.seek(0)
            pairs = np.frombuffer(f.read(), dtype=self.dtype)
            f.close()
            if not len(pairs):
                continue
            wide = self.dtype is WIDE
            order = np.lexsort((pairs["index"], pairs["key2"], pairs["key"]) if wide else (pairs["index"], pairs["key"]))
            keys, idx = pairs["key"][order], pairs["index"][order]
            new = keys[1:] != keys[:-1]
            if wide:
                keys2 = pairs["key2"][order]
                new |= keys2[1:] != keys2[:-1]
            starts = np.flatnonzero(np.r_[True, new])
            first = np.repeat(idx[starts], np.diff(np.r_[starts, len(keys)]))
            dup = idx != first
            yield first[dup], idx[dup]
        self.files = []
