"""`factory revision-check`: how well the revision gates (hygiene/gates.py) separate bad revisions
from good ones, on triples whose labels a person gave by reading them.

Each line of the set is {prompt, answer, revision, label, note?}; label is one of
`better` (the revision is a better reply than the answer), `worse` (on topic and a reply, but not
better), `off_topic` (it left the prompt's subject) or `critique` (it talks about the answer instead
of answering the user). For each gate: how many it flags, its precision (flagged ones that carry
its label) and recall (ones with its label it flags); for all gates together: recall of off_topic
and critique revisions, and the share of `better` revisions dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from factory.config import ROOT
from factory.errors import InputError
from factory.hygiene.gates import revision_gate
from factory.yamlfile import jsonl_lines

DEFAULT_SET = ROOT / "evals" / "revision_check.jsonl"
GATES = ("critique", "off_topic")


class LabelledRevision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str
    answer: str
    revision: str
    label: Literal["better", "worse", "off_topic", "critique"]
    note: str = ""
    source: str = ""  # where the triple came from (the embedded model's run, or written by hand)


def read_set(path: Path) -> list[LabelledRevision]:
    if not path.is_file():
        raise InputError(path, "no such file")
    items = []
    for n, line in jsonl_lines(path.read_text()):
        try:
            items.append(LabelledRevision.model_validate_json(line))
        except ValueError as e:
            raise InputError(path, f"not a labelled revision ({{prompt, answer, revision, label}}): {e}",
                             line=n) from None
    if not items:
        raise InputError(path, "no labelled revisions in the file")
    return items


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 3) if b else None


def revision_check(path: Path = DEFAULT_SET) -> dict:
    items = read_set(path)
    flags = [revision_gate(it.prompt, it.answer, it.revision) for it in items]
    labels = [it.label for it in items]
    report: dict = {"triples": len(items), "labels": {k: labels.count(k) for k in ("better", "worse", "off_topic",
                                                                                      "critique")}}
    for gate in GATES:
        flagged = [lab for lab, f in zip(labels, flags) if f == gate]
        report[gate] = {"flagged": len(flagged), "precision": _ratio(flagged.count(gate), len(flagged)),
                        "recall": _ratio(flagged.count(gate), labels.count(gate))}
    bad = [f is not None for lab, f in zip(labels, flags) if lab in GATES]
    good = [f is not None for lab, f in zip(labels, flags) if lab == "better"]
    worse = [f is not None for lab, f in zip(labels, flags) if lab == "worse"]
    report["all_gates"] = {"bad_caught": _ratio(sum(bad), len(bad)), "better_dropped": _ratio(sum(good), len(good)),
                           "worse_dropped": _ratio(sum(worse), len(worse))}
    # A miss: a gate's label not flagged as that gate, or anything else flagged at all.
    report["misses"] = [{"line": i + 1, "label": lab, "flagged": f} for i, (lab, f) in enumerate(zip(labels, flags))
                        if f != (lab if lab in GATES else None)]
    return report
