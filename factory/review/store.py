"""Review decisions in RUN_DIR/review.sqlite (WAL): one row per record id with its decision, an edited
answer, a note and a version. A write names the version it was based on; a stale one is refused
(`Conflict`), so two browser tabs (or two reviewers) never silently overwrite each other."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from factory.engine.rundir import now

FILE = "review.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id TEXT PRIMARY KEY,
    decision TEXT NOT NULL CHECK (decision IN ('none', 'accepted', 'rejected')),
    edited_answer TEXT,
    note TEXT NOT NULL DEFAULT '',
    version INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
"""
Verdict = Literal["none", "accepted", "rejected"]


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    decision: Verdict = "none"
    edited_answer: str | None = None  # replaces the model's final answer at export
    note: str = ""
    version: int = 0  # 0: never written
    updated_at: str | None = None

    @property
    def label(self) -> str | None:
        """What export records in `human_review`: rejected, edited, accepted, or None (no decision)."""
        if self.decision == "rejected":
            return "rejected"
        if self.edited_answer is not None:
            return "edited"
        return "accepted" if self.decision == "accepted" else None


class Conflict(Exception):
    """The record changed since the writer last read it; `current` is what is stored now."""

    def __init__(self, current: Decision):
        super().__init__(f"record {current.id} is at version {current.version}")
        self.current = current


class ReviewStore:
    def __init__(self, run_dir: Path):
        self.db = sqlite3.connect(str(run_dir / FILE), isolation_level=None, check_same_thread=False, timeout=10)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

    @staticmethod
    def read_all(run_dir: Path) -> dict[str, Decision]:
        """Every stored decision, without creating the file where there is none (export's view)."""
        if not (run_dir / FILE).is_file():
            return {}
        store = ReviewStore(run_dir)
        try:
            return store.all()
        finally:
            store.close()

    def all(self) -> dict[str, Decision]:
        rows = self.db.execute("SELECT id, decision, edited_answer, note, version, updated_at FROM decisions")
        return {row[0]: _decision(row) for row in rows}

    def get(self, record_id: str) -> Decision:
        row = self.db.execute("SELECT id, decision, edited_answer, note, version, updated_at FROM decisions "
                              "WHERE id=?", (record_id,)).fetchone()
        return _decision(row) if row else Decision(id=record_id)

    def put(self, record_id: str, version: int, decision: Verdict, edited_answer: str | None, note: str) -> Decision:
        """Write if the stored version is still `version`, else raise Conflict. Atomic across processes."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            current = self.get(record_id)
            if current.version != version:
                raise Conflict(current)
            new = Decision(id=record_id, decision=decision, edited_answer=edited_answer, note=note,
                           version=version + 1, updated_at=now())
            self.db.execute("INSERT OR REPLACE INTO decisions VALUES (?,?,?,?,?,?)",
                            (new.id, new.decision, new.edited_answer, new.note, new.version, new.updated_at))
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        return new

    def close(self) -> None:
        self.db.close()


def _decision(row: tuple) -> Decision:
    return Decision(id=row[0], decision=row[1], edited_answer=row[2], note=row[3], version=row[4], updated_at=row[5])
