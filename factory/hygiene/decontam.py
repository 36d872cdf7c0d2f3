"""Decontamination: flag a text that shares a word n-gram (default 13) with an evaluation set.

Words are those of `dedup.words` (NFKC, lowercase, runs of letters and digits), so case, spacing
and punctuation never hide an overlap. Each eval set is stored as a sorted numpy array of uint64
n-gram hashes (8 bytes per n-gram; a Python set of ints needs about 60) and looked up with
`np.searchsorted`. Hashes are 64-bit, so a false match needs a hash collision (about 1e-19 per
pair of n-grams); the reported snippet comes from the checked text itself.

Short texts (fewer than n words) keep a simple rule: such a text is one gram, its whole word
sequence, and it matches only an eval text that is *exactly* the same word sequence. A short
answer that happens to sit inside a long eval text is not contamination by this rule.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from factory.errors import InputError
from factory.hygiene.dedup import encode_words, gram_hashes, words

SNIPPET_WORDS = 8  # how much of the overlapping n-gram the match reason quotes


class Decontaminator:
    """Holds one or more eval sets (name -> sorted n-gram hashes); `match` says which one a text hits."""

    def __init__(self, sets: dict[str, np.ndarray], n: int = 13):
        if n < 1:
            raise ValueError("n must be at least 1")
        self.n = n
        self.sets = {name: np.unique(h.astype(np.uint64)) for name, h in sets.items()}  # sorted, unique

    @classmethod
    def from_texts(cls, texts: Iterable[str], n: int = 13, name: str = "eval") -> Decontaminator:
        docs = [d for d in map(words, texts) if d]  # an eval text with no words cannot contaminate
        tokens, lengths = encode_words(docs)
        return cls({name: gram_hashes(tokens, lengths, n)[0]}, n)

    @classmethod
    def from_file(cls, path: str | Path, field: str = "text", n: int = 13,
                  name: str | None = None) -> Decontaminator:
        """An eval set from a file: .jsonl (one object per line), .parquet (a column) or .txt (one
        text per line; `field` is ignored). Named after the file stem unless `name` is given."""
        path = Path(path)
        return cls.from_texts(list(read_eval_texts(path, field)), n, name or path.stem)

    def merged(self, other: Decontaminator) -> Decontaminator:
        """Both eval sets in one checker (same n required; a shared name keeps both sets' grams)."""
        if other.n != self.n:
            raise ValueError(f"cannot merge eval sets built with n={self.n} and n={other.n}")
        sets = dict(self.sets)
        for name, h in other.sets.items():
            sets[name] = np.concatenate([sets[name], h]) if name in sets else h
        return Decontaminator(sets, self.n)

    def __len__(self) -> int:
        return sum(len(h) for h in self.sets.values())

    def match(self, text: str) -> str | None:
        """'<eval set>: "<start of the shared n-gram>"' if text shares an n-gram with an eval set."""
        return self.match_many([text])[0]

    def match_many(self, texts: Sequence[str], chunk: int = 20_000) -> list[str | None]:
        """`match` for many texts, vectorised: one hash lookup per eval set and chunk of texts."""
        out: list[str | None] = []
        for s in range(0, len(texts), chunk):
            out.extend(self._match_chunk([words(t) for t in texts[s:s + chunk]]))
        return out

    def _match_chunk(self, docs: list[list[str]]) -> list[str | None]:
        tokens, lengths = encode_words(docs)
        hashes, owner = gram_hashes(tokens, lengths, self.n)  # grams in text order, then position
        first = np.searchsorted(owner, np.arange(len(docs)))  # index of each text's first gram
        out: list[str | None] = [None] * len(docs)
        for name, table in self.sets.items():  # the first set (in insertion order) that hits wins
            if not len(table):
                continue
            at = np.searchsorted(table, hashes).clip(max=len(table) - 1)
            hit = np.flatnonzero(table[at] == hashes)
            texts, firsts = np.unique(owner[hit], return_index=True)  # the earliest hit per text
            for t, g in zip(texts.tolist(), hit[firsts].tolist()):
                if out[t] is None and docs[t]:  # an empty text never matches
                    out[t] = _reason(name, docs[t][g - first[t]:g - first[t] + self.n])
        return out


def _reason(name: str, gram: list[str]) -> str:
    more = " ..." if len(gram) > SNIPPET_WORDS else ""
    return f'{name}: "{" ".join(gram[:SNIPPET_WORDS])}{more}"'


def read_eval_texts(path: Path, field: str) -> Iterator[str]:
    """The texts of an eval file; any bad line or value raises InputError located by line (or row)."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise InputError(path, "eval set file not found")
    if suffix == ".txt":
        yield from _read_lines(path)
    elif suffix in (".jsonl", ".json"):
        yield from _read_jsonl(path, field)
    elif suffix == ".parquet":
        yield from _read_parquet(path, field)
    else:
        raise InputError(path, f"unknown eval set format '{suffix}': use .jsonl, .parquet or .txt")


def _read_lines(path: Path) -> Iterator[str]:
    for _, line in _decoded(path):
        if line.strip():
            yield line


def _read_jsonl(path: Path, field: str) -> Iterator[str]:
    for lineno, line in _decoded(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(path, f"broken JSON: {e.msg} (column {e.colno})", line=lineno) from None
        if not isinstance(obj, dict):
            raise InputError(path, f"expected a JSON object, got {type(obj).__name__}", line=lineno)
        value = obj.get(field)
        if not isinstance(value, str):
            why = "missing" if value is None else f"must be a string, got {type(value).__name__}"
            raise InputError(path, why, line=lineno, field=field)
        yield value


def _read_parquet(path: Path, field: str) -> Iterator[str]:
    import pyarrow.parquet as pq  # only this format needs it

    try:
        table = pq.read_table(path, columns=[field])
    except (KeyError, ValueError) as e:  # pyarrow raises one of these when the column is missing
        raise InputError(path, f"no such column ({e})", field=field) from None
    except OSError as e:
        raise InputError(path, f"cannot read parquet: {e}") from None
    for row, value in enumerate(table.column(field).to_pylist(), 1):
        if not isinstance(value, str):
            raise InputError(path, f"row {row}: must be a string, got {type(value).__name__}",
                             line=row, field=field)
        yield value


def _decoded(path: Path) -> Iterator[tuple[int, str]]:
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(path, f"not valid UTF-8 (byte 0x{raw[e.start]:02x})", line=lineno) from None
