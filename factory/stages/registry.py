"""The record stages, in the order a record meets them. The pipeline walks this list: adding a stage
means its module (with a `STAGE` entry), its config class and section in `StagesConfig`, its templates,
and one line here.

`check_rows` refuses, before anything is called, a combination of stages whose work the export would
discard (factory/export/rows.py keeps, per record, the idk rows, else the fact-check `prefer` rows, else
the default rows judged and annotated)."""

from __future__ import annotations

from typing import Any

from factory.errors import FactoryError
from factory.stages import StageEntry, answer, critique_revise, factcheck, idk, judge

RECORD_STAGES: list[StageEntry] = [answer.STAGE, critique_revise.STAGE, idk.STAGE, factcheck.STAGE, judge.STAGE]


def active(stages: Any) -> list[tuple[StageEntry, Any]]:
    """(entry, config section) of each configured record stage, in order. `stages`: a StagesConfig."""
    return [(e, section) for e in RECORD_STAGES if (section := getattr(stages, e.name)) is not None]


def check_rows(stages: Any) -> None:
    """Refuse stages whose results no exported row would carry: beside a stage that writes its own rows
    (idk; factcheck with `prefer`), every other stage but the answers and those it feeds on is wasted."""
    on = active(stages)
    for entry, section in on:
        if entry.rows(section) != "own":
            continue
        wasted = [e.name for e, s in on if e is not entry and e.rows(s) != "base" and e.name not in entry.feeds]
        if wasted:
            what = "factcheck with prefer: true" if entry.name == "factcheck" else entry.name
            raise FactoryError(
                f"stages.{entry.name}: {what} writes its own dataset rows, so the export would discard the work of "
                f"{', '.join('stages.' + w for w in wasted)} (calls paid for, rows never written). Set "
                f"{', '.join('stages.' + w for w in wasted)} to null, or run them in a separate pipeline"
                + (", or set stages.factcheck.prefer to false to add fact scores to their rows instead"
                   if entry.name == "factcheck" else ""))
