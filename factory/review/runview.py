"""A finished run directory as the review app sees it: pages of record summaries filtered with SQL
over the run's index on disk (factory/review/index.py), and one record in full, read from
state.sqlite when it is opened, with word diffs. Memory does not grow with the run."""

from __future__ import annotations

import json
from pathlib import Path

from factory.diff import word_ops
from factory.engine.rundir import RunDir
from factory.engine.state import RunState
from factory.errors import FactoryError
from factory.hygiene.clean import sft_target
from factory.records import Record
from factory.review import index
from factory.review.store import FILE as DECISIONS
from factory.review.store import ReviewStore

FACT_VERDICTS = index.FACT_VERDICTS


class RunView:
    def __init__(self, run_dir: Path):
        run = RunDir.open(run_dir)
        if not run.has_lineage or not (run_dir / "state.sqlite").is_file():
            raise FactoryError(f"{run_dir}: the run has not finished; review a run once it has finished "
                               f"(or continue it: factory run --resume {run_dir})")
        self.dir = run_dir
        self.manifest, self.constitution = run.manifest, run.constitution()
        self.rows = index.row_maker(run)
        self.db = index.open_index(run)
        if not (run_dir / DECISIONS).is_file():
            ReviewStore(run_dir).close()  # no decision yet: an empty store to read them from
        self.db.execute("ATTACH DATABASE ? AS rv", (f"{(run_dir / DECISIONS).resolve().as_uri()}?mode=ro",))
        self.state = RunState(run_dir, readonly=True)
        self.facets = json.loads(self.db.execute("SELECT value FROM meta WHERE key='facets'").fetchone()[0])
        self.records = self.db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def decision_counts(self) -> dict[str, int]:
        """Records per decision label ("none": not reviewed)."""
        counts = dict(self.db.execute(f"SELECT {index.LABEL}, COUNT(*) FROM rv.decisions d JOIN entries e "
                                      "ON e.id = d.id GROUP BY 1").fetchall())
        counts["none"] = self.records - sum(n for label, n in counts.items() if label != "none")
        return counts

    def page(self, q: dict[str, str], offset: int, limit: int) -> tuple[int, list[dict]]:
        """(how many records match, the summaries of those from `offset`, at most `limit`), in id order."""
        total = self.db.execute(*index.count(q)).fetchone()[0]
        return total, [index.summary(row) for row in self.db.execute(*index.select(q, offset, limit))]

    def has(self, record_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM entries WHERE id=?", (record_id,)).fetchone() is not None

    def target(self, record_id: str) -> str | None:
        """The model text the record's `sft` row trains on (before any human edit), or None (dropped at a
        stage, or failed)."""
        return self._target(Record.model_validate_json(self.state.record(record_id)), record_id)

    def _target(self, rec: Record, record_id: str) -> str | None:
        row = self.db.execute("SELECT status, stage FROM entries WHERE id=?", (record_id,)).fetchone()
        exported = row is not None and (row[0] == "exported" or row[1] == "export")
        return sft_target(self.rows(rec)) if exported else None

    def detail(self, record_id: str) -> dict:
        """The record in full, plus the word diffs of every revision (against the text it revised) and
        of the final answer against the first, and the text export trains on."""
        row = self.db.execute(f"SELECT {', '.join(f'e.{c}' for c in (*index.SUMMARY, 'principles', *FACT_VERDICTS))}, "
                              f"{index.LABEL}, COALESCE(d.version, 0) FROM entries e LEFT JOIN rv.decisions "
                              "d ON d.id = e.id WHERE e.id=?", (record_id,)).fetchone()
        summary = index.summary(row)
        for key in ("decision", "version"):
            summary.pop(key)
        rec = Record.model_validate_json(self.state.record(record_id))
        data = rec.model_dump(mode="json")
        for cand, out in zip(rec.candidates, data["candidates"]):
            previous = cand.answer
            for rnd, rnd_out in zip(cand.rounds, out["rounds"]):
                rnd_out["diff"] = word_ops(previous, rnd.revision)
                previous = previous if rnd.gate else rnd.revision  # a gated revision is not built on
            out["final"] = cand.final
            out["final_diff"] = word_ops(cand.answer, cand.final)
        return {"summary": summary, "record": data, "target": self._target(rec, record_id)}

    def close(self) -> None:
        self.db.close()
        self.state.close()
