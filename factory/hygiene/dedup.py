"""Exact and near-duplicate detection.

Exact: a 128-bit blake2b hash of the normalised text.

Near: MinHash LSH over word n-gram shingles (default 5-grams), with the maintained Rust library
rensa (https://github.com/beowolx/rensa): `RMinHash` signatures (128 slots of 32 bits) and an
`RMinHashLSH` index (16 bands of 8 rows). A shingle is its words joined by single spaces; a text
of fewer than `ngram` words is one shingle, its whole word sequence (so "one two" and "One, two!"
match, and a short text never equals a long text's n-gram). rensa hashes token bytes with a fixed
hash (FxHasher) and a seeded sketch, so signatures never depend on PYTHONHASHSEED.

Candidate pairs (sharing all rows of one band) are kept only when their Jaccard similarity,
*estimated from the signatures* (share of equal slots), reaches `threshold`; this drops LSH false
positives without keeping any shingle set. Kept pairs are joined with union-find and each cluster
keeps its first text. With 16 x 8 bands a pair becomes a candidate with probability
1 - (1 - J^8)^16: 0.95 at J = 0.8, 0.994 at 0.85, 0.9999 at 0.9, 0.06 at 0.5 and 0.001 at 0.3; the
estimate's standard error is at most sqrt(J(1-J)/128), about 0.035 near J = 0.8 (measured: 0.026).
Only texts that share a bucket with another text get an LSH index and pair checks; the buckets
are found from per-band keys grouped in temporary files (partition.py), so memory does not grow
with the number of texts (only with the number of near duplicates); `bench/dedup.py` measures about
30,000 texts of 100 words per second on one core, most of it splitting words and shingles.

The numpy word and n-gram hashing (`encode_words`, `gram_hashes`) stays here for
`decontam.py`, which looks n-grams up exactly rather than by MinHash.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rensa import RMinHash, RMinHashLSH

from factory.hygiene.partition import Partitions

_WORD = re.compile(r"\w+")
_U64 = np.uint64
_BATCH = 2_000  # texts per signature batch: bounds the token hashes rensa holds at once
# Odd 64-bit constants (splitmix64's and xxhash's) for position weights, mixing and length tags.
_MUL = np.array([0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xC2B2AE3D27D4EB4F], dtype=_U64)


def normalise_text(s: str) -> str:
    """NFKC, lowercase, whitespace collapsed to single spaces, punctuation stripped at both edges."""
    s = " ".join(unicodedata.normalize("NFKC", s).lower().split())  # faster than re.sub(r"\s+")
    start, end = 0, len(s)
    while start < end and (unicodedata.category(s[start]).startswith("P") or s[start] == " "):
        start += 1
    while end > start and (unicodedata.category(s[end - 1]).startswith("P") or s[end - 1] == " "):
        end -= 1
    return s[start:end]


def words(s: str) -> list[str]:
    """The word tokens of the normalised text: runs of letters, digits and underscores. Same as
    `_WORD.findall(normalise_text(s))`; skips the whitespace and edge steps, which cannot change it."""
    return _WORD.findall(unicodedata.normalize("NFKC", s).lower())


def exact_duplicates(texts: Sequence[str]) -> list[int | None]:
    """For each text, the index of the first earlier text with the same normalised hash, else None."""
    return _dense(len(texts), exact_duplicate_pairs(texts))


def exact_duplicate_pairs(texts: Sequence[str], folder: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(index, kept) of every text whose 128-bit normalised hash an earlier text has (kept: the first
    such text), ordered by index. The hashes are grouped on disk (partition.py): memory holds a
    batch of hashes and one partition, not 16 bytes per text."""
    parts = Partitions(len(texts), wide=True, folder=folder)
    for s in range(0, len(texts), _BATCH):
        chunk = texts[s:s + _BATCH]
        digests = b"".join(hashlib.blake2b(normalise_text(t).encode(), digest_size=16).digest() for t in chunk)
        keys = np.frombuffer(digests, dtype=[("hi", _U64), ("lo", _U64)])
        parts.add(keys["hi"], np.arange(s, s + len(chunk)), keys["lo"])
    return _by_index(parts)


def _by_index(parts: Partitions) -> tuple[np.ndarray, np.ndarray]:
    got = list(parts.repeated())
    if not got:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    first, idx = np.concatenate([f for f, _ in got]), np.concatenate([i for _, i in got])
    order = np.argsort(idx, kind="stable")
    return idx[order], first[order]


def _dense(n: int, pairs: tuple[np.ndarray, np.ndarray]) -> list[int | None]:
    out: list[int | None] = [None] * n
    for i, kept in zip(*(a.tolist() for a in pairs), strict=True):
        out[i] = kept
    return out


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over all 64 output bits (uint64 wraps)."""
    x = x ^ (x >> _U64(30))
    x *= _MUL[1]
    x ^= x >> _U64(27)
    x *= _MUL[2]
    x ^= x >> _U64(31)
    return x


def _weights(n: int) -> np.ndarray:
    """n distinct odd per-position weights, so that 'a b' and 'b a' hash differently."""
    return _mix(np.arange(1, n + 1, dtype=_U64) * _MUL[0]) | _U64(1)


def encode(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """All texts' words as one uint64 array of word hashes, plus the word count of each text."""
    return encode_words([words(t) for t in texts])


def encode_words(docs: Sequence[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """`encode` for texts already split by `words`. Each distinct word is hashed once (blake2b-8)."""
    vocab: dict[str, int] = {}
    ids: list[int] = []
    for toks in docs:
        for w in toks:  # id = order of first sight
            j = vocab.get(w)
            if j is None:
                j = vocab[w] = len(vocab)
            ids.append(j)
    table = np.fromiter((int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
                         for w in vocab), dtype=_U64, count=len(vocab))
    lengths = np.fromiter((len(t) for t in docs), dtype=np.int64, count=len(docs))
    return table[np.asarray(ids, dtype=np.int64)], lengths


def gram_hashes(tokens: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every word n-gram, and the text each belongs to (ascending).

    A text of fewer than n words (even zero) yields one gram: its whole word sequence. The gram
    length is mixed into the hash so a short gram never equals an n-gram by construction.
    """
    total, weights = len(tokens), _weights(n)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.cumsum(lengths) - lengths
    span = max(total - n + 1, 0)
    acc = np.zeros(span, dtype=_U64)
    for k in range(n):  # acc[j] = sum_k tokens[j + k] * w_k  (mod 2^64)
        acc += tokens[k:k + span] * weights[k]
    valid = np.ones(span, dtype=bool)  # drop the n-grams that start in the last n-1 words of a text
    ends = np.cumsum(lengths)
    for k in range(1, n):
        valid[ends[(ends >= k) & (ends - k < span)] - k] = False
    h, o = acc[valid] + _length_tag(np.array([n])), owner[:span][valid]
    short = np.flatnonzero(lengths < n)
    if len(short):  # rare: a Python loop is fine; np.insert keeps the owners ascending
        sums = np.array([(tokens[starts[i]:starts[i] + lengths[i]] * weights[:lengths[i]]).sum(dtype=_U64)
                         for i in short], dtype=_U64)
        at = np.searchsorted(o, short)
        h, o = np.insert(h, at, sums + _length_tag(lengths[short])), np.insert(o, at, short)
    return _mix(h), o


def _length_tag(lengths: np.ndarray) -> np.ndarray:
    return lengths.astype(_U64) * _MUL[3]  # array product: wraps mod 2^64 without a warning


class NearDedup(BaseModel):
    """MinHash LSH near-duplicate finder (rensa). `num_perm` signature slots split into `bands`
    bands of num_perm / bands rows; a pair becomes a candidate when all rows of one band agree,
    then is kept when the estimated Jaccard reaches `threshold`. Kept pairs are joined with
    union-find; each cluster keeps its first text."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ngram: int = Field(5, ge=1)
    num_perm: int = Field(128, ge=1)
    bands: int = Field(16, ge=1)
    threshold: float = Field(0.8, gt=0.0, le=1.0)
    seed: int = Field(0, ge=0, lt=2**64)  # rensa takes an unsigned 64-bit seed

    @model_validator(mode="after")
    def _bands_divide_num_perm(self) -> NearDedup:
        if self.num_perm % self.bands:
            raise ValueError(f"num_perm ({self.num_perm}) must be a multiple of bands ({self.bands})")
        return self

    @property
    def rows(self) -> int:
        """Signature slots per band."""
        return self.num_perm // self.bands

    def shingles(self, text: str) -> list[str]:
        """The text's word n-grams, each as its words joined by single spaces; a text of fewer than
        `ngram` words (even none) is one shingle, its whole word sequence."""
        return list(_shingles(words(text), self.ngram))

    def minhashes(self, texts: Sequence[str]) -> list[RMinHash]:
        """One rensa `RMinHash` per text, built in batches (rensa hashes each batch's shingles in
        one call; only one batch of shingles is alive at a time)."""
        out: list[RMinHash] = []
        for s in range(0, len(texts), _BATCH):
            out.extend(RMinHash.from_token_sets(self._shingle_rows(texts[s:s + _BATCH]), self.num_perm, self.seed))
        return out

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """The (len(texts), num_perm) uint32 MinHash signature matrix, the same digests as
        `minhashes` (for inspection and tests; `clusters` never converts rensa's matrix to numpy)."""
        sig = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        for s in range(0, len(texts), _BATCH):
            m = RMinHash.digest_matrix_from_token_sets(self._shingle_rows(texts[s:s + _BATCH]), self.num_perm,
                                                       self.seed)
            sig[s:s + _BATCH] = np.asarray(m.to_rows(), dtype=np.uint32).reshape(-1, self.num_perm)
        return sig

    def clusters(self, texts: Sequence[str]) -> list[list[int]]:
        """Groups of near-duplicate texts (only groups of two or more), ordered by their first
        index; in each group the kept text (the first) comes first, then the dropped ones in
        index order."""
        groups: dict[int, list[int]] = {}
        for i, r in zip(*(a.tolist() for a in self.duplicate_pairs(texts)), strict=True):
            groups.setdefault(r, [r]).append(i)
        return [groups[r] for r in sorted(groups)]

    def duplicates(self, texts: Sequence[str]) -> list[int | None]:
        """For each text, the index of the kept text (first of its cluster) it duplicates, else None."""
        return _dense(len(texts), self.duplicate_pairs(texts))

    def duplicate_pairs(self, texts: Sequence[str], folder: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(index, kept) of every text in a cluster it does not lead (kept: the cluster's first
        text), ordered by index, in two passes.

        1. `_flagged`: which texts share a band bucket with any other, from the signatures made a
           batch at a time; all that is kept of them is one 64-bit key per band and text, grouped
           on disk (partition.py), so no signature matrix of all texts, nor their texts, is held.
        2. Only the flagged texts (the near duplicates and a few unlucky others) get `RMinHash`
           objects again (same digests) and an LSH index, which yields the candidate pairs for
           `_verified_roots`.
        """
        if len(texts) < 2:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        flagged = self._flagged(texts, folder)  # ascending, so a local root maps to the global root
        roots = np.asarray(self._verified_roots([texts[i] for i in flagged.tolist()]), dtype=np.int64)
        moved = roots != np.arange(len(roots))
        return flagged[moved], flagged[roots[moved]]

    def _shingle_rows(self, texts: Sequence[str]) -> Iterator[tuple[str, ...]]:
        return (_shingles(words(t), self.ngram) for t in texts)

    def _flagged(self, texts: Sequence[str], folder: Path | None = None) -> np.ndarray:
        """The indices of the texts whose rows of some band equal another text's rows of that band.
        A band's rows become one key (a weighted sum with distinct odd weights, mixed with the
        band's number); a key collision can only flag a text more, which the verified pass then
        clears. Memory holds one batch of signatures and one partition of keys."""
        n, rows = len(texts), self.rows
        weights = _weights(rows)
        parts = Partitions(self.bands * n, folder=folder)
        tags = np.arange(self.bands, dtype=_U64) * _MUL[1]  # array arithmetic: wraps without a warning
        for s in range(0, n, _BATCH):
            m = RMinHash.digest_matrix_from_token_sets(self._shingle_rows(texts[s:s + _BATCH]), self.num_perm,
                                                       self.seed)
            sig = np.asarray(m.to_rows(), dtype=_U64).reshape(-1, self.num_perm)
            index = np.arange(s, s + len(sig))
            for b in range(self.bands):
                band = (sig[:, b * rows:(b + 1) * rows] * weights).sum(axis=1, dtype=_U64)
                parts.add(_mix(band + tags[b]), index)
        got = [a for pair in parts.repeated() for a in pair]
        return np.unique(np.concatenate(got)) if got else np.empty(0, np.int64)

    def _verified_roots(self, texts: Sequence[str]) -> list[int]:
        """Cluster roots over verified candidate pairs. Each pair from the LSH index is looked at
        once, from its smaller index, and its Jaccard is estimated only when the two are not yet in
        one cluster; that filter is vectorised, so a bucket of k near-identical texts costs about
        k^2 array elements and no Python loop over them (6,000 such texts: about 3 s on 2 busy
        cores; `exact_duplicates` first keeps such buckets small). Clusters are kept as member
        lists; a merge relabels the smaller one (union by size)."""
        n = len(texts)
        sigs = self.minhashes(texts)
        lsh = RMinHashLSH(self.threshold, self.num_perm, self.bands)
        lsh.insert_many(sigs)
        label = np.arange(n)  # cluster label of every text
        members: dict[int, list[int]] = {}  # label -> texts, for clusters of two or more
        for i, sig in enumerate(sigs):
            cand = np.asarray(lsh.query(sig), dtype=np.int64)
            cand = cand[cand > i]
            for j in cand[label[cand] != label[i]].tolist():
                a, b = int(label[i]), int(label[j])
                if a != b and sig.jaccard(sigs[j]) >= self.threshold:
                    small, big = members.get(a, [a]), members.get(b, [b])
                    if len(small) > len(big):
                        small, big, a, b = big, small, b, a
                    label[small] = b
                    members[b] = big + small
                    members.pop(a, None)
        roots = list(range(n))
        for group in members.values():
            root = min(group)
            for i in group:
                roots[i] = root
        return roots


def _shingles(toks: list[str], n: int) -> tuple[str, ...]:
    """See `NearDedup.shingles`; a tuple, which rensa reads as one token row."""
    if len(toks) < n:
        return (" ".join(toks),)
    return tuple(map(" ".join, zip(*[toks[k:] for k in range(n)])))
