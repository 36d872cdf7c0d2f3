"""`write_report(run_dir)`: report.html, one self-contained file (inline CSS and SVG, no script, no
external reference) built from the run directory alone. Every text from a record is escaped."""

from __future__ import annotations

import os
from collections import Counter
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path

from jinja2 import Environment, StrictUndefined
from markupsafe import Markup

from factory.diff import word_ops
from factory.engine.rundir import RunDir
from factory.errors import FactoryError
from factory.records import Record
from factory.report import svg
from factory.report.data import RunFigures, read_figures
from factory.report.lineage import Lineage, read_lineage

MAX_TEXT = 3000  # characters of one text shown in the sampled records


def clip(text: str, n: int = MAX_TEXT) -> str:
    return text if len(text) <= n else f"{text[:n]}\u2026 ({len(text) - n:,} more characters)"


def diff_segments(before: str, after: str) -> list[tuple[str, str]]:
    """Word diff as (op, text) segments: eq, del, ins. The template escapes the texts."""
    names = {"=": "eq", "-": "del", "+": "ins"}
    return [(names[op], text) for op, text in word_ops(clip(before), clip(after))]


def _rate(n: float, d: float) -> str:
    return f"{n / d:.0%}" if d else "-"


def principle_rows(lin: Lineage, view: RunFigures) -> list[dict]:
    """Every principle of the constitution (drawn or not), then any other id seen (e.g. fact-check)."""
    ids = [p["id"] for p in view.principles] + sorted(set(lin.principles) - {p["id"] for p in view.principles})
    rows = []
    for pid in ids:
        r = lin.principles.get(pid)
        if r is None:
            rows.append({"id": pid, "drawn": 0, "noop": "-", "judged": 0, "won": "-", "p": "-", "fact": "-"})
            continue
        fact = f"{r.fact_delta / r.fact_compared:+.2f} (n={r.fact_compared})" if r.fact_compared else "-"
        rows.append(
            {
                "id": pid,
                "drawn": r.drawn,
                "noop": _rate(r.noop, r.drawn),
                "judged": r.judged,
                "won": _rate(r.revision_won, r.judged),
                "p": f"{r.p_revision / r.judged:.2f}" if r.judged else "-",
                "fact": fact,
            }
        )
    return rows


def length_rows(lin: Lineage) -> list[dict]:
    """Words per answer, first answers against final revisions."""
    out = []
    for name, words in (("first answers", lin.initial_words), ("final revisions", lin.final_words)):
        if n := words.total():
            out.append(
                {
                    "what": name,
                    "n": n,
                    "mean": f"{sum(w * k for w, k in words.items()) / n:.1f}",
                    "median": f"{_median(words, n):g}",
                    "max": max(words),
                }
            )
    return out


def _median(counts: Counter, n: int) -> float:
    """The median of values given as value -> count (as statistics.median of the expanded list)."""
    seen, lower = 0, None
    for value in sorted(counts):
        seen += counts[value]
        if lower is None and seen >= (n + 1) // 2:
            lower = value
        if seen >= n // 2 + 1:
            return value if n % 2 else (lower + value) / 2
    raise ValueError("no values")


def judge_rows(lin: Lineage) -> list[dict]:
    return [
        {
            "id": pid,
            "comparisons": r.comparisons,
            "consistency": _rate(r.consistent, r.ordered),
            "ties": _rate(r.ties, r.comparisons),
            "margin": f"{r.margin / r.comparisons:.2f}" if r.comparisons else "-",
        }
        for pid, r in sorted(lin.judge_rows.items())
    ]


def _by_kind(values: dict[str, Counter]) -> dict[str, Counter]:
    """Series in the order the texts were written (first answers first), as in the length plot."""
    order = ("initial", "final", "revised")
    return {k: values[k] for k in sorted(values, key=lambda k: order.index(k) if k in order else len(order))}


def charts(view: RunFigures, lin: Lineage | None) -> dict[str, Markup]:
    """Every plot of the report, by name; a plot whose data is absent is left out."""
    out: dict[str, str] = {}
    stages = (view.stats or {}).get("stages", {})
    if stages:
        out["funnel"] = svg.bars([(name, st["out"]) for name, st in stages.items()], " out")
        drops = [(f"{name}: {reason}", n) for name, st in stages.items() for reason, n in st["dropped"].items()]
        if drops:
            out["drops"] = svg.bars(sorted(drops, key=lambda d: -d[1]), colour=3)
    if lin and lin.initial_words:
        series = {"first answer": lin.initial_words, "after revision": lin.final_words}
        out["lengths"] = svg.histogram(series, "words per answer", bins=24, lo=0)
    if lin and lin.margins:
        out["margins"] = svg.histogram({"margin": lin.margins}, "margin |2p - 1| per comparison", bins=20, lo=0, hi=1)
        out["consistency"] = svg.bars(sorted(lin.consistency.items()), colour=1)
    if lin and lin.f1:
        out["precision"] = svg.histogram(_by_kind(lin.precision), "fact precision S/(S+N)", bins=10, lo=0, hi=1)
        out["f1"] = svg.histogram(_by_kind(lin.f1), "fact F1@K", bins=10, lo=0, hi=1)
        out["claims"] = svg.bars(sorted(lin.claims.items()), colour=2)
    if lin and lin.p_ik:
        out["p_ik"] = svg.histogram({"P(IK)": lin.p_ik}, "fraction of samples correct", bins=10, lo=0, hi=1)
    t = view.timeline
    if t and t.calls + t.failed:
        xlabel = f"time since the first call ({t.unit})"
        out["throughput"] = svg.lines(
            t.x, {"calls": t.calls_per_min, "failed attempts": t.failed_per_min}, xlabel, "per minute"
        )
        out["tokens"] = svg.lines(t.x, {"tokens": t.tokens_per_s}, xlabel, "tokens per second")
        busy = [i for i, n in enumerate(t.calls_per_min) if n]  # a bin without calls has no latency
        out["latency"] = svg.lines(
            [t.x[i] for i in busy], {"latency": [t.latency[i] for i in busy]}, xlabel, "mean seconds per call"
        )
        out["progress"] = (
            svg.lines(t.x, {"USD": t.cost_cum}, xlabel, "USD spent (cumulative)")
            if t.cost > 0
            else svg.lines(t.x, {"calls": t.calls_cum}, xlabel, "calls completed (cumulative)")
        )
    return {k: Markup(v) for k, v in out.items()}  # svg.py escapes every label


def record_view(rec: Record) -> dict:
    """One sampled record for the template: texts clipped, revisions as word diffs."""
    cands = []
    for c in rec.candidates:
        rounds, before = [], c.answer
        for r in c.rounds:
            rounds.append(
                {
                    "principle": r.principle_id,
                    "critique": clip(r.critique),
                    "noop": r.noop,
                    "diff": diff_segments(before, r.revision),
                }
            )
            before = r.revision
        cands.append({"index": c.index, "answer": clip(c.answer), "finish": c.finish_reason, "rounds": rounds})
    judge = []
    if rec.judgement:
        opts = rec.judgement.options
        for c in rec.judgement.comparisons:
            name = f"[{opts[c.i].candidate}] {opts[c.i].kind} vs [{opts[c.j].candidate}] {opts[c.j].kind}"
            judge.append(
                {
                    "pair": name,
                    "principle": c.principle_id,
                    "by": c.by,
                    "p": "unreadable" if c.p_i is None else f"{c.p_i:.2f}",
                    "consistent": c.consistent,
                }
            )
    facts = []
    for check in rec.facts.checks if rec.facts else []:
        facts.append(
            {
                "what": f"[{check.candidate}] {check.kind}",
                "f1": f"{check.f1:.2f}",
                "precision": "-" if check.precision is None else f"{check.precision:.2f}",
                "claims": [(cl.verdict or "unreadable", clip(cl.text, 400)) for cl in check.claims],
            }
        )
    return {
        "id": rec.id,
        "prompt": clip(rec.prompt),
        "dialogue": [(m["role"], clip(m["content"])) for m in rec.context],  # system prompt and earlier turns
        "source": rec.source,
        "metadata": rec.metadata,
        "dropped": rec.dropped,
        "candidates": cands,
        "judge": judge,
        "facts": facts,
        "idk": rec.idk and {"label": rec.idk.label, "p_ik": rec.idk.p_ik, "target": clip(rec.idk.target)},
    }


def render(run_dir: Path) -> str:
    view = read_figures(run_dir)
    lin = read_lineage(RunDir(run_dir, view.manifest))
    env = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(files("factory.report").joinpath("template.html").read_text())
    return template.render(
        view=view,
        m=view.manifest,
        stats=view.stats or {},
        lin=lin,
        charts=charts(view, lin),
        principles=principle_rows(lin, view) if lin else [],
        judges=judge_rows(lin) if lin else [],
        lengths=length_rows(lin) if lin else [],
        samples=[record_view(r) for r in (lin.samples + lin.dropped_samples if lin else [])],
        generated=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write RUN_DIR/report.html (or `out`) whole, moved in place, and return its path."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "report.html"
    text = render(run_dir)
    if not out.parent.is_dir():
        raise FactoryError(f"{out.parent}: no such folder for the report; create it or choose another --out")
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out
