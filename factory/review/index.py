"""The review app's index of a run, on disk (RUN_DIR/review-index.sqlite): one row per record (done,
dropped at a stage or at export, failed) with what the list shows and filters on, and the filter
choices with their counts. The app pages and filters with SQL over it and reads a record in full
from state.sqlite only when it is opened, so its memory does not grow with the run.

The index is built once, streaming the run's records, and built again when the run changed since
(a resume or retry-failed: the state, failed.jsonl or the manifest differ from what it was built
from). Building it replays the export's own decisions without human ones (each record's SFT target
and the cleaning filters' drops): that step holds what the export's dedup holds."""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from factory.engine.rundir import RunDir
from factory.engine.state import RunState
from factory.engine.stats import StageStats
from factory.export.rows import rows
from factory.hygiene.clean import Cleaner, sft_target
from factory.records import Record

FILE = "review-index.sqlite"
FORMAT = 1  # change when what the index holds changes: older indexes are rebuilt
FACT_VERDICTS = ("supported", "not_supported", "irrelevant", "unreadable")
COLUMNS = ("id", "position", "status", "stage", "outcome", "reason", "prompt", "source", "kind", "turns", "margin",
           "consistent", "principles", *FACT_VERDICTS)
SCHEMA = f"""
CREATE TABLE entries ({", ".join(COLUMNS)}, PRIMARY KEY (id)) WITHOUT ROWID;
CREATE TABLE principles (principle TEXT, id TEXT, PRIMARY KEY (principle, id)) WITHOUT ROWID;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
LABEL = ("CASE WHEN d.decision = 'rejected' THEN 'rejected' WHEN d.edited_answer IS NOT NULL THEN 'edited' "
         "WHEN d.decision = 'accepted' THEN 'accepted' ELSE 'none' END")
SUMMARY = ("id", "prompt", "source", "status", "stage", "outcome", "reason", "margin", "consistent", "kind", "turns")
BATCH = 1000


def fingerprint(run_dir: Path) -> str:
    """What the index was built from: the run's state, failures and manifest, as they are on disk."""
    parts = [f"format {FORMAT}"]
    for name in ("state.sqlite", "state.sqlite-wal", "failed.jsonl", "manifest.json", "records.jsonl"):
        path = run_dir / name
        if path.is_file() and ((st := path.stat()).st_size or not name.endswith("-wal")):  # readers leave empty ones
            parts.append(f"{name} {st.st_size} {st.st_mtime_ns}")
    return "; ".join(parts)


def open_index(run: RunDir) -> sqlite3.Connection:
    """The run's index, read-only, built first if it is missing or stale."""
    path = run.path / FILE
    want = fingerprint(run.path)
    if path.is_file():
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        try:
            row = db.execute("SELECT value FROM meta WHERE key='fingerprint'").fetchone()
        except sqlite3.DatabaseError:
            row = None
        if row is not None and json.loads(row[0]) == want:
            return db
        db.close()
    build(run, path, want)
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)


def build(run: RunDir, path: Path, fingerprint_: str) -> None:
    """Write the index whole to a temporary file and move it in place."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two apps starting at once each build their own
    tmp.unlink(missing_ok=True)
    db = sqlite3.connect(str(tmp))
    db.execute("PRAGMA journal_mode=OFF")
    db.executescript(SCHEMA)
    state = RunState(run.path, readonly=True)
    try:
        db.execute("BEGIN")
        writer = _Writer(db)
        cfg = run.config()
        exported_rows = row_maker(run)
        position = 0  # among the done records: the cleaning filters' drops are keyed by it

        def exported() -> Iterator[tuple[Record, str | None]]:
            nonlocal position
            for status, stage, reason, data in state.rows("WHERE status IN ('done', 'dropped', 'failed')"):
                rec = Record.model_validate_json(data)
                if status == "done":
                    target = sft_target(exported_rows(rec))
                    writer.add(rec, position, "exported", "done", "")
                    position += 1
                    yield rec, target
                elif status == "dropped":
                    writer.add(rec, None, "dropped", rec.dropped.stage if rec.dropped else stage,
                               rec.dropped.reason if rec.dropped else reason)
                else:
                    writer.add(rec, None, "failed", stage, reason)

        with tempfile.TemporaryDirectory(dir=run.path) as scratch_dir:
            drops = Cleaner(cfg.stages.export.clean, cfg.path).plan(exported(), Path(scratch_dir))
        writer.flush()
        db.execute("CREATE TEMP TABLE cleaned (position INTEGER PRIMARY KEY, reason TEXT)")
        db.executemany("INSERT INTO cleaned VALUES (?, ?)", ((p, reason[:80]) for p, reason in drops.items()))
        db.execute("UPDATE entries SET status='dropped', stage='export', outcome='dropped:export', reason=c.reason "
                   "FROM cleaned AS c WHERE entries.position = c.position")
        meta = {"fingerprint": fingerprint_, "facets": facets(db)}
        db.executemany("INSERT INTO meta VALUES (?, ?)", ((k, json.dumps(v)) for k, v in meta.items()))
        db.execute("COMMIT")
    except BaseException:
        db.close()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        state.close()
    db.close()
    os.replace(tmp, path)


def row_maker(run: RunDir) -> Callable[[Record], list]:
    """What a record contributes to each dataset, as the run's export made it (no human decision)."""
    cfg, constitution, scratch = run.config().stages.export, run.constitution(), StageStats()
    return lambda rec: rows(rec, constitution, run.generator, cfg, scratch)


class _Writer:
    """Inserts index rows in batches."""

    def __init__(self, db: sqlite3.Connection):
        self.db, self.entries, self.principles = db, [], []

    def add(self, rec: Record, position: int | None, status: str, stage: str, reason: str) -> None:
        principles = set(rec.principle_ids)
        margin = consistent = None
        if rec.judgement:
            principles |= {c.principle_id for c in rec.judgement.comparisons}
            if rec.judgement.pairs:
                best = max(rec.judgement.pairs, key=lambda p: p.p_chosen)
                margin, consistent = round(2 * best.p_chosen - 1, 4), best.consistent
        facts = fact_counts(rec)
        outcome = status if status == "exported" else f"{status}:{stage}"
        self.entries.append((rec.id, position, status, stage, outcome, reason[:80], rec.prompt[:240], rec.source,
                             rec.metadata.get("kind"), len(rec.history) + 1, margin, consistent,
                             json.dumps(sorted(principles)), *(facts[v] for v in FACT_VERDICTS)))
        self.principles.extend((p, rec.id) for p in principles)
        if len(self.entries) >= BATCH:
            self.flush()

    def flush(self) -> None:
        self.db.executemany(f"INSERT OR REPLACE INTO entries VALUES ({','.join('?' * len(COLUMNS))})", self.entries)
        self.db.executemany("INSERT OR IGNORE INTO principles VALUES (?, ?)", self.principles)
        self.entries, self.principles = [], []


def facets(db: sqlite3.Connection) -> dict[str, dict]:
    """The filter choices with their counts, each in the order of its first record (by id)."""

    def grouped(sql: str) -> dict:
        return dict(db.execute(sql).fetchall())

    return {
        "principle": grouped("SELECT principle, COUNT(*) FROM principles GROUP BY principle ORDER BY MIN(id)"),
        "outcome": grouped("SELECT outcome, COUNT(*) FROM entries GROUP BY outcome ORDER BY MIN(id)"),
        "reason": grouped("SELECT reason, COUNT(*) FROM entries WHERE reason != '' GROUP BY reason ORDER BY MIN(id)"),
        "fact": {v: db.execute(f"SELECT COUNT(*) FROM entries WHERE {v} > 0").fetchone()[0] for v in FACT_VERDICTS},
    }


def fact_counts(rec: Record) -> dict[str, int]:
    counts = dict.fromkeys(FACT_VERDICTS, 0)
    for check in rec.facts.checks if rec.facts else []:
        for claim in check.claims:
            counts[claim.verdict or "unreadable"] += 1
    return counts


def where(q: dict[str, str]) -> tuple[str, list]:
    """SQL for the query's filters over `entries e` joined to the decisions `d` (all must hold)."""
    clauses, args = [], []
    if q.get("principle"):
        clauses.append("e.id IN (SELECT id FROM principles WHERE principle = ?)")
        args.append(q["principle"])
    for key in ("outcome", "reason"):
        if q.get(key):
            clauses.append(f"e.{key} = ?")
            args.append(q[key])
    if q.get("fact"):
        clauses.append(f"e.{q['fact']} > 0" if q["fact"] in FACT_VERDICTS else "0")
    if q.get("decision"):
        clauses.append(f"{LABEL} = ?")
        args.append(q["decision"])
    for key, op in (("min_margin", ">="), ("max_margin", "<=")):
        if q.get(key):
            clauses.append(f"e.margin IS NOT NULL AND e.margin {op} ?")
            args.append(float(q[key]))
    if q.get("q"):
        clauses.append("instr(lower(e.prompt), ?) > 0")
        args.append(q["q"].lower())
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", args


def summary(row: tuple) -> dict:
    """A list row as the page reads it (SUMMARY columns, then principles, facts, decision, version)."""
    out = dict(zip(SUMMARY, row))
    rest = row[len(SUMMARY):]
    out["principles"] = json.loads(rest[0])
    out["facts"] = dict(zip(FACT_VERDICTS, rest[1:1 + len(FACT_VERDICTS)]))
    out["decision"], out["version"] = rest[-2], rest[-1]
    return out


def count(q: dict[str, str]) -> tuple[str, list]:
    """SQL for how many records match."""
    clause, args = where(q)
    join = "LEFT JOIN rv.decisions d ON d.id = e.id" if q.get("decision") else ""
    return f"SELECT COUNT(*) FROM entries e {join} {clause}", args


def select(q: dict[str, str], offset: int, limit: int) -> tuple[str, list]:
    """SQL for one page of matching summaries, in id order."""
    clause, args = where(q)
    columns = ", ".join(f"e.{c}" for c in (*SUMMARY, "principles", *FACT_VERDICTS))
    sql = (f"SELECT {columns}, {LABEL}, COALESCE(d.version, 0) FROM entries e LEFT JOIN rv.decisions d "
           f"ON d.id = e.id {clause} ORDER BY e.id LIMIT ? OFFSET ?")
    return sql, [*args, limit, offset]
