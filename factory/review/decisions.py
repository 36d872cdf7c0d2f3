"""How an export applies the human decisions saved in RUN_DIR/review.sqlite. Every export of a run
directory (the end of a run, a resume, `factory export`) applies them:

- rejected: the record leaves every dataset, counted as the drop reason `human_rejected`. It leaves
  before dedup, so it never costs a near-duplicate twin its place.
- edited: the edited text replaces the record's SFT target (the model text its `sft` row trains
  on) wherever that text is the side trained towards: the `sft` row, the `chosen` side of `prefs`
  and `reward` rows, and `kto` rows labelled good. Rejected sides stay as the model wrote them.
  The fact scores of a replaced text become null: nobody checked the human's text. The edited
  text goes through the same cleaning filters (dedup, quality) as a model's.
- accepted: kept as it is; still subject to the cleaning filters.

Where the run has any decision, every row gains a `human_review` column: "accepted", "edited", or
null (not reviewed). Runs without decisions keep the plain schema. Export counts what it applied
(`human_accepted`, `human_edited` counters, `human_rejected` drops) for the dataset card.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from factory.engine.stats import StageStats
from factory.review.store import Decision, ReviewStore

if TYPE_CHECKING:
    import pyarrow as pa

COLUMN = "human_review"


class Review:
    def __init__(self, decisions: dict[str, Decision]):
        self.decisions = {k: d for k, d in decisions.items() if d.label is not None}

    @classmethod
    def load(cls, run_dir: Path) -> Review:
        return cls(ReviewStore.read_all(run_dir))

    @property
    def active(self) -> bool:
        return bool(self.decisions)

    def rejected(self, record_id: str) -> bool:
        d = self.decisions.get(record_id)
        return d is not None and d.decision == "rejected"

    def schema(self, schema: pa.Schema) -> pa.Schema:
        import pyarrow as pa  # at export time only: a run does not load pyarrow until it exports

        return schema.append(pa.field(COLUMN, pa.string())) if self.active else schema

    def apply(self, record_id: str, rows: Iterable[tuple[str, dict]], st: StageStats) -> Iterator[tuple[str, dict]]:
        """A record's (config, row) pairs with its decision applied; counts it once, at its `sft` row."""
        if not self.active:
            yield from rows
            return
        d = self.decisions.get(record_id)
        label = d.label if d else None
        edit = d.edited_answer if d else None
        target: str | None = None
        for name, row in rows:
            if name == "sft":
                target = row["messages"][-1]["content"]
                if label in ("accepted", "edited"):
                    st.counters[f"human_{label}"] += 1
            if edit is not None and target is not None:
                row = _edited(name, row, target, edit)
            yield name, row | {COLUMN: label}


def _edited(name: str, row: dict, target: str, edit: str) -> dict:
    """`row` with the trained-towards side replaced by `edit` where it is `target`."""
    def swap(turns: list[dict]) -> list[dict]:
        last = turns[-1]
        return [*turns[:-1], last | {"content": edit}] if last["content"] == target else turns

    if name == "sft":
        return row | {"messages": swap(row["messages"]), "fact_precision": None, "fact_f1": None}
    if name == "prefs" and row["chosen"][-1]["content"] == target:
        return row | {"chosen": swap(row["chosen"]), "fact_precision": None, "fact_f1": None}
    if name == "reward":
        return row | {"chosen": swap(row["chosen"])}
    if name == "kto" and row["label"]:
        return row | {"completion": swap(row["completion"])}
    return row
