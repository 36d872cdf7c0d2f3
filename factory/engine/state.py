"""A run's progress in state.sqlite: one row per finished record (done, dropped or failed), each
committed in its own transaction the moment the record finishes. A SIGKILL at any moment leaves
every finished record there exactly once and no half record, so `--resume` skips them and redoes
only the rest (their completed calls come from the call log). A lock file keeps a second process
off the same run directory.

It is also where a run's records are kept, the only full copy: each compressed (factory/engine/
blobs.py; records of older runs, uncompressed, still read). `RunDir.lineage` reads them back."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from factory.engine.blobs import Packer
from factory.engine.calllog import attach_copy
from factory.errors import FactoryError
from factory.records import Record

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('done', 'dropped', 'failed')),
    stage TEXT NOT NULL,
    reason TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (  -- failed calls that belong to no record (question generation)
    key TEXT PRIMARY KEY,
    stage TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def lock_run_dir(run_dir: Path) -> IO[str]:
    """Hold an exclusive lock on RUN_DIR/.lock for the life of the process (the OS drops it on exit,
    SIGKILL included). A second process is refused with the holder's pid."""
    handle = (run_dir / ".lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "unknown"
        handle.close()
        raise FactoryError(f"{run_dir} is in use by another factory process (pid {pid}); wait for it to finish "
                           "or stop it, then run the command again") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


class RunState:
    def __init__(self, run_dir: Path, *, readonly: bool = False):
        """`readonly`: for readers of a run (report, review, export), which take no lock and write nothing."""
        path = run_dir / "state.sqlite"
        if readonly:
            self.db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        else:
            self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        self.packer = Packer(self.db, writable=not readonly)

    def count(self) -> int:
        """Records finished (done, dropped or failed)."""
        return self.db.execute("SELECT count(*) FROM records").fetchone()[0]

    def has(self, record_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM records WHERE id=?", (record_id,)).fetchone() is not None

    def finish(self, record: Record, status: str, stage: str, reason: str = "") -> None:
        self.db.execute("INSERT INTO records VALUES (?,?,?,?,?)",
                        (record.id, status, stage, reason, self.packer.pack("record", record.model_dump_json())))

    def fail_call(self, key: str, stage: str, reason: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO failures VALUES (?,?,?)", (key, stage, reason))

    def clear_call_failures(self) -> None:
        """Failed generation calls are tried again by every invocation, so each starts with none."""
        self.db.execute("DELETE FROM failures")

    def reset_failed(self) -> int:
        """Forget failed records so the next invocation processes them again. Returns how many."""
        return self.db.execute("DELETE FROM records WHERE status='failed'").rowcount

    def records(self, status: str | None = None) -> Iterator[tuple[str, str, str, Record]]:
        """(status, stage, reason, record), ordered by record id, streamed."""
        for st, stage, reason, data in self.rows("WHERE status=?" if status else "", (status,) if status else ()):
            yield st, stage, reason, Record.model_validate_json(data)

    def rows(self, where: str = "", args: tuple = ()) -> Iterator[tuple[str, str, str, str]]:
        """(status, stage, reason, record JSON) of the records `where` selects, ordered by id, streamed."""
        for st, stage, reason, data in self.db.execute(f"SELECT status, stage, reason, data FROM records {where} "
                                                       "ORDER BY id", args):
            yield st, stage, reason, self.packer.unpack(data)

    def record(self, record_id: str) -> str | None:
        """One record's JSON, or None."""
        row = self.db.execute("SELECT data FROM records WHERE id=?", (record_id,)).fetchone()
        return None if row is None else self.packer.unpack(row[0])

    def call_failures(self) -> list[tuple[str, str, str]]:
        return self.db.execute("SELECT key, stage, reason FROM failures ORDER BY key").fetchall()

    def stage_counts(self, stages: list[str]) -> dict[str, tuple[int, int, Counter[str]]]:
        """(records in, records out, drops by reason) per record stage, over the whole run: a record
        that finished at stage S went into every stage up to S."""
        rows = self.db.execute("SELECT status, stage, reason, COUNT(*) FROM records GROUP BY status, stage, reason")
        ended: dict[str, Counter[str]] = {s: Counter() for s in stages}
        done = 0
        for status, stage, reason, n in rows:
            if status == "done":
                done += n
            elif stage in ended:
                ended[stage]["failed" if status == "failed" else reason] += n
        out = {}
        remaining = done + sum(sum(c.values()) for c in ended.values())
        for s in stages:
            out[s] = (remaining, remaining - sum(ended[s].values()), ended[s])
            remaining -= sum(ended[s].values())
        return out

    def get_meta(self, key: str) -> object | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, key: str, value: object) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (key, json.dumps(value)))

    def merge_from(self, path: Path, meta: dict[str, object]) -> None:
        """Add another state's records (a Ray shard's) and set `meta`, in one transaction."""
        attach_copy(self.db, path, [
            "INSERT OR REPLACE INTO main.records SELECT * FROM other.records",
            *(("INSERT OR REPLACE INTO main.meta VALUES (?, ?)", (key, json.dumps(value))) for key, value in meta.items()),
        ])

    def close(self) -> None:
        self.db.close()
