"""A finished run directory as the review app sees it: every record (exported, dropped at a stage or
at export, failed) with a summary to filter on, and one record in full with word diffs."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from factory.diff import word_ops
from factory.engine.rundir import RunDir
from factory.engine.stats import StageStats
from factory.errors import FactoryError
from factory.export.rows import rows
from factory.hygiene.clean import Cleaner, sft_target
from factory.records import Record

FACT_VERDICTS = ("supported", "not_supported", "irrelevant", "unreadable")


@dataclass
class Entry:
    record: Record
    status: str  # exported | dropped | failed
    stage: str  # where it ended: "done", a stage name, or "export"
    reason: str  # the drop or failure reason ("" when exported)
    target: str | None  # the model text its `sft` row trains on (before any human edit)


class RunView:
    def __init__(self, run_dir: Path):
        run = RunDir.open(run_dir)
        if not run.has_lineage:
            raise FactoryError(f"{run_dir}: the run has not finished; review a run once it has finished "
                               f"(or continue it: factory run --resume {run_dir})")
        self.dir = run_dir
        self.manifest, self.cfg, self.constitution = run.manifest, run.config(), run.constitution()
        self.entries: dict[str, Entry] = {}
        done: list[Record] = []
        for rec in run.lineage():
            if rec.dropped:
                self.entries[rec.id] = Entry(rec, "dropped", rec.dropped.stage, rec.dropped.reason, None)
            else:
                done.append(rec)
        self._export_outcomes(done)
        for line in run.lines("failed.jsonl"):
            if "record" in line:
                rec = Record.model_validate(line["record"])
                self.entries[rec.id] = Entry(rec, "failed", line["stage"], line["reason"], None)
        self.order = sorted(self.entries)
        self.summaries = {i: self._summary(i) for i in self.order}

    def _export_outcomes(self, done: list[Record]) -> None:
        """Each exported record's SFT target, and the cleaning filters' drops, as `factory export` would
        make them without human decisions (the machine's own verdict)."""
        export_cfg = self.cfg.stages.export
        generator = self.manifest["stage_models"]["answer"]
        scratch = StageStats()
        targets = [sft_target(rows(rec, self.constitution, generator, export_cfg, scratch)) for rec in done]
        with tempfile.TemporaryDirectory() as tmp:
            drops = Cleaner(export_cfg.clean, self.cfg.path).plan(zip(done, targets), Path(tmp))
        for position, (rec, target) in enumerate(zip(done, targets)):
            reason = drops.get(position, "")
            self.entries[rec.id] = Entry(rec, "dropped" if reason else "exported", "export" if reason else "done",
                                         reason, target)

    def _summary(self, record_id: str) -> dict:
        e = self.entries[record_id]
        rec = e.record
        principles = set(rec.principle_ids)
        margin = consistent = None
        if rec.judgement:
            principles |= {c.principle_id for c in rec.judgement.comparisons}
            if rec.judgement.pairs:
                best = max(rec.judgement.pairs, key=lambda p: p.p_chosen)
                margin, consistent = round(2 * best.p_chosen - 1, 4), best.consistent
        return {"id": rec.id, "prompt": rec.prompt[:240], "source": rec.source, "status": e.status, "stage": e.stage,
                "outcome": e.status if e.status == "exported" else f"{e.status}:{e.stage}", "reason": e.reason[:80],
                "principles": sorted(principles), "margin": margin, "consistent": consistent,
                "facts": fact_counts(rec), "kind": rec.metadata.get("kind"), "turns": len(rec.history) + 1}

    def detail(self, record_id: str) -> dict:
        """The record in full, plus the word diffs of every revision (against the text it revised) and
        of the final answer against the first, and the text export trains on."""
        e = self.entries[record_id]
        data = e.record.model_dump(mode="json")
        for cand, out in zip(e.record.candidates, data["candidates"]):
            previous = cand.answer
            for rnd, rnd_out in zip(cand.rounds, out["rounds"]):
                rnd_out["diff"] = word_ops(previous, rnd.revision)
                previous = previous if rnd.gate else rnd.revision  # a gated revision is not built on
            out["final"] = cand.final
            out["final_diff"] = word_ops(cand.answer, cand.final)
        return {"summary": self.summaries[record_id], "record": data, "target": e.target}


def fact_counts(rec: Record) -> dict[str, int]:
    counts = dict.fromkeys(FACT_VERDICTS, 0)
    for check in rec.facts.checks if rec.facts else []:
        for claim in check.claims:
            counts[claim.verdict or "unreadable"] += 1
    return counts
