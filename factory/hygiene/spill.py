"""Texts kept in a temporary file rather than in memory, read back by index, slice or in order: what
export's dedup holds for each record (its prompt, its SFT target, its id) at 8 bytes of memory each,
so cleaning a million records does not hold a million texts."""

from __future__ import annotations

import tempfile
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path

CHUNK = 10_000  # texts read back at once when iterating


class Spill(Sequence[str]):
    """`folder`: where the temporary file goes (default: the system's; a run's own folder keeps a big
    export off a /tmp that may be in memory)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self._file = tempfile.TemporaryFile(dir=folder)
        self._ends = array("q")  # byte offset where each text ends

    def append(self, text: str) -> None:
        data = text.encode()
        self._file.seek(0, 2)
        self._file.write(data)
        self._ends.append((self._ends[-1] if self._ends else 0) + len(data))

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return [self[k] for k in range(start, stop, step)]
            if stop <= start:
                return []
            base = self._ends[start - 1] if start else 0
            self._file.seek(base)
            data = self._file.read(self._ends[stop - 1] - base)
            out, prev = [], 0
            for k in range(start, stop):
                end = self._ends[k] - base
                out.append(data[prev:end].decode())
                prev = end
            return out
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self[i:i + 1][0]

    def __iter__(self) -> Iterator[str]:
        for s in range(0, len(self), CHUNK):
            yield from self[s:s + CHUNK]

    def close(self) -> None:
        self._file.close()


class Column:
    """Records still in a dedup: (export position, record id, text) each, spilled."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self.positions, self.ids, self.texts = array("q"), Spill(folder), Spill(folder)

    def add(self, position: int, record_id: str, text: str) -> None:
        self.positions.append(position)
        self.ids.append(record_id)
        self.texts.append(text)

    def without(self, drops: dict[int, str]) -> Column:
        """The records not in `drops`, in order (one sequential pass)."""
        out = Column(self.folder)
        for s in range(0, len(self.positions), CHUNK):
            for p, i, t in zip(self.positions[s:s + CHUNK], self.ids[s:s + CHUNK], self.texts[s:s + CHUNK]):
                if p not in drops:
                    out.add(p, i, t)
        return out

    def close(self) -> None:
        self.ids.close()
        self.texts.close()
