"""Texts and numbers kept in temporary files rather than in memory, read back by index, slice or in
order: what export's dedup holds for each record (its prompt, its SFT target, its id, its
position), so cleaning a million records holds neither a million texts nor a million offsets."""

from __future__ import annotations

import tempfile
from abc import abstractmethod
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path

CHUNK = 10_000  # items read back at once when iterating, and offsets buffered before a write


class _Stored(Sequence):
    """Index, slice and in-order reading over `_slice(start, stop)`, which subclasses give."""

    @abstractmethod
    def _slice(self, start: int, stop: int):
        """Items start..stop-1 (0 <= start <= stop <= len)."""

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return [self[k] for k in range(start, stop, step)]
            return self._slice(start, max(start, stop))
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._slice(i, i + 1)[0]

    def __iter__(self) -> Iterator:
        for s in range(0, len(self), CHUNK):
            yield from self[s:s + CHUNK]


class Ints(_Stored):
    """64-bit integers appended to a temporary file (a buffer of CHUNK in memory)."""

    def __init__(self, folder: Path | None = None) -> None:
        self._file = tempfile.TemporaryFile(dir=folder)
        self._tail = array("q")  # not yet written
        self._written = 0

    def append(self, value: int) -> None:
        self._tail.append(value)
        if len(self._tail) >= CHUNK:
            self._file.seek(0, 2)
            self._tail.tofile(self._file)
            self._written += len(self._tail)
            self._tail = array("q")

    def __len__(self) -> int:
        return self._written + len(self._tail)

    def _slice(self, start: int, stop: int) -> array:
        out = array("q")
        if start < min(stop, self._written):
            self._file.seek(start * 8)
            out.frombytes(self._file.read((min(stop, self._written) - start) * 8))
        if stop > self._written:
            out.extend(self._tail[max(start, self._written) - self._written:stop - self._written])
        return out

    def close(self) -> None:
        self._file.close()


class Spill(_Stored):
    """`folder`: where the temporary files go (default: the system's; a run's own folder keeps a big
    export off a /tmp that may be in memory)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self._file = tempfile.TemporaryFile(dir=folder)
        self._ends = Ints(folder)  # byte offset where each text ends
        self._size = 0

    def append(self, text: str) -> None:
        data = text.encode()
        self._file.seek(0, 2)
        self._file.write(data)
        self._size += len(data)
        self._ends.append(self._size)

    def __len__(self) -> int:
        return len(self._ends)

    def _slice(self, start: int, stop: int) -> list[str]:
        if stop <= start:
            return []
        ends = self._ends[max(start - 1, 0):stop]
        base = ends[0] if start else 0
        ends = ends[1:] if start else ends
        self._file.seek(base)
        data = self._file.read(ends[-1] - base)
        out, prev = [], 0
        for end in ends:
            out.append(data[prev:end - base].decode())
            prev = end - base
        return out

    def close(self) -> None:
        self._file.close()
        self._ends.close()


class Column:
    """Records still in a dedup: (export position, record id, text) each, spilled."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self.positions, self.ids, self.texts = Ints(folder), Spill(folder), Spill(folder)

    def add(self, position: int, record_id: str, text: str) -> None:
        self.positions.append(position)
        self.ids.append(record_id)
        self.texts.append(text)

    def without(self, drops) -> Column:
        """The records not in `drops` (positions), in order (one sequential pass)."""
        out = Column(self.folder)
        for s in range(0, len(self.positions), CHUNK):
            for p, i, t in zip(self.positions[s:s + CHUNK], self.ids[s:s + CHUNK], self.texts[s:s + CHUNK]):
                if p not in drops:
                    out.add(p, i, t)
        return out

    def close(self) -> None:
        self.positions.close()
        self.ids.close()
        self.texts.close()
