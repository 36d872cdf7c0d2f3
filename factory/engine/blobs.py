"""Compressed text columns in the run's SQLite files (calls.sqlite, state.sqlite): zstd, with a
dictionary per group of similar values, stored once in the database's `dicts` table.

A group is, say, the requests of one template version: their few-shot examples, system prompt and
instructions repeat in every call. The first `SAMPLES` values of a group are compressed on their
own and collected; their concatenation then becomes the group's dictionary (zstd "raw content":
any byte string that later values share text with), so the shared prefix is stored once per
template version and every later request costs little more than its own variables. Measured on
bench/storage.py (2,000 records): requests 6.4 KB -> 3.3 KB with plain zstd, 1.3 KB with the
dictionary.

A packed value is a BLOB: 8 bytes naming its dictionary (the first 8 bytes of the dictionary's
sha256; zeros for none), then one zstd frame. A TEXT value is an older run's uncompressed row and
reads as it is, so old run directories still read. Packed rows copy between databases byte for
byte (a Ray shard's into the run, the shared cache's into a run) once the dictionaries they name are
copied first (`copy_dicts`): a dictionary's id is its content's hash, so copies never clash."""

from __future__ import annotations

import hashlib
import sqlite3
import threading

import zstandard

SCHEMA = "CREATE TABLE IF NOT EXISTS dicts (id BLOB PRIMARY KEY, grp TEXT NOT NULL, data BLOB NOT NULL)"
NONE = bytes(8)
SAMPLES = 16  # values of a group that make its dictionary
MAX_DICT = 128 * 1024  # bytes of dictionary, at most (the last ones of the samples)
LEVEL = 3  # zstd level: higher levels saved about 7% more here, at several times the CPU


class Packer:
    """Packs and unpacks one database's compressed values. Thread-safe (zstd contexts are not)."""

    def __init__(self, db: sqlite3.Connection, *, writable: bool = True):
        self.db = db
        if writable:
            db.execute(SCHEMA)
        self._lock = threading.Lock()
        self._plain = zstandard.ZstdCompressor(level=LEVEL)
        self._compressors: dict[str, tuple[bytes, zstandard.ZstdCompressor]] = {}
        self._samples: dict[str, list[bytes]] = {}
        self._decompressors: dict[bytes, zstandard.ZstdDecompressor] = {NONE: zstandard.ZstdDecompressor()}

    def pack(self, group: str, text: str) -> bytes:
        data = text.encode()
        with self._lock:
            if group not in self._compressors:
                self._learn(group, data)
            ref, compressor = self._compressors.get(group, (NONE, self._plain))
            return ref + compressor.compress(data)

    def _learn(self, group: str, data: bytes) -> None:
        """Collect a sample; with enough, make (or take up an earlier invocation's) dictionary."""
        samples = self._samples.setdefault(group, [])
        samples.append(data)
        if len(samples) < SAMPLES:
            return
        row = self.db.execute("SELECT id, data FROM dicts WHERE grp=? ORDER BY rowid DESC LIMIT 1", (group,)).fetchone()
        if row is None:
            content = b"".join(samples)[-MAX_DICT:]
            row = (hashlib.sha256(content).digest()[:8], content)
            self.db.execute("INSERT OR IGNORE INTO dicts VALUES (?,?,?)", (row[0], group, row[1]))
        ref, content = bytes(row[0]), bytes(row[1])
        zdict = zstandard.ZstdCompressionDict(content, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        self._compressors[group] = (ref, zstandard.ZstdCompressor(level=LEVEL, dict_data=zdict))
        del self._samples[group]

    def unpack(self, value: str | bytes) -> str:
        if isinstance(value, str):  # an uncompressed row of an older run
            return value
        ref = bytes(value[:8])
        with self._lock:
            decompressor = self._decompressors.get(ref)
            if decompressor is None:
                row = self.db.execute("SELECT data FROM dicts WHERE id=?", (ref,)).fetchone()
                if row is None:
                    raise sqlite3.DatabaseError(f"a compressed value names dictionary {ref.hex()}, which is not in "
                                                "the database; the file is damaged or was copied without it")
                zdict = zstandard.ZstdCompressionDict(bytes(row[0]), dict_type=zstandard.DICT_TYPE_RAWCONTENT)
                decompressor = self._decompressors[ref] = zstandard.ZstdDecompressor(dict_data=zdict)
            return decompressor.decompress(value[8:]).decode()


def copy_dicts(db: sqlite3.Connection, schema: str = "other") -> None:
    """Copy every dictionary of the attached database `schema` (if it has any) into main."""
    if db.execute(f"SELECT 1 FROM {schema}.sqlite_master WHERE name='dicts'").fetchone():
        db.execute(f"INSERT OR IGNORE INTO main.dicts SELECT * FROM {schema}.dicts")
