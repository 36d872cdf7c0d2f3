"""The per-round table of a loop (`factory inspect LOOP_DIR`) and its report.html: per round, the
datasets' sizes and drop reasons, the judge's quality (position consistency, ties), the teacher's
counters, and the win rate against round 0 and the previous round with prompt-clustered intervals;
a plot of both win rates across rounds."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from rich.console import Console
from rich.table import Table

from factory.errors import FactoryError
from factory.report.svg import lines

COLUMNS = ("round", "datasets", "dropped", "judge: position consistency / ties", "comparisons by", "train",
           "win vs round 0 (95% CI)", "win vs previous (95% CI)", "classifier share > 0 by kind (round 0 -> now)",
           "seconds")


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _win(report: dict | None) -> str:
    return "-" if report is None else f"{report['win_rate']} [{report['ci95'][0]}, {report['ci95'][1]}] n={report['n']}"


def round_rows(out: Path) -> list[dict]:
    """One dict per round that has started, from its run, train and eval folders."""
    manifest = _json(out / "loop.json")
    if manifest is None:
        raise FactoryError(f"{out}: not a loop directory (no loop.json)")
    rows = []
    for k in range(1, manifest["rounds"] + 1):
        folder = out / f"round-{k}"
        if not folder.is_dir():
            break
        stats = _json(folder / "run" / "stats.json") or {}
        stages = stats.get("stages", {})
        dropped: dict[str, int] = {}
        for st in stages.values():
            for reason, n in st.get("dropped", {}).items():
                dropped[reason] = dropped.get(reason, 0) + n
        quality = stats.get("judge_quality") or {}
        meta = _json(folder / "train" / "train_meta.json") or {}
        seconds = sum(s.get("seconds", 0) for key, s in manifest["steps"].items() if key.startswith(f"{k}."))
        rows.append({
            "round": k,
            "datasets": {name: sum(c.values()) for name, c in stats.get("datasets", {}).items()},
            "dropped": dropped,
            "position_consistency": quality.get("position_consistency"),
            "tie_rate": quality.get("tie_rate"),
            "comparisons_by": quality.get("comparisons_by") or {},  # the teacher's share of the labels
            "train": {"steps": meta.get("metrics", {}).get("steps"), "final_loss": meta.get("metrics", {}).get("final_loss"),
                      "rows": meta.get("data", {}).get("rows")} if meta else None,
            "vs_round_0": _json(folder / "eval" / "eval.json"),
            "vs_previous": _json(folder / "eval_prev" / "eval.json") if k > 1 else _json(folder / "eval" / "eval.json"),
            "seconds": round(seconds, 1),
        })
    return rows


def _cells(r: dict) -> list[str]:
    def kv(d: dict | None) -> str:
        return ", ".join(f"{k}: {v}" for k, v in (d or {}).items()) or "-"

    train = r["train"]
    return [str(r["round"]), kv(r["datasets"]), kv(r["dropped"]), f"{r['position_consistency']} / {r['tie_rate']}",
            kv(r["comparisons_by"]), "-" if not train else f"{train['steps']} steps, loss {train['final_loss']}",
            _win(r["vs_round_0"]), _win(r["vs_previous"]), _scores(r["vs_round_0"]), str(r["seconds"])]


def _scores(report: dict | None) -> str:
    """A classifier eval judge (vader:negative, ...): its share above 0 per prompt kind, base and policy."""
    by_kind = (report or {}).get("scores_by_kind") or {}
    return ", ".join(f"{kind}: {b['baseline']['share_above_0']} -> {b['model']['share_above_0']}"
                     for kind, b in by_kind.items()) or "-"


def print_loop(out: Path, console: Console) -> None:
    """The same table as the report's, turned: one row per measure, one column per round."""
    manifest, rows = _json(out / "loop.json") or {}, round_rows(out)
    console.print(f"{out}: {manifest.get('status')}, {manifest.get('rounds')} round(s) from {manifest.get('base')}, "
                  f"wall {manifest.get('wall_seconds', '-')} s", highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("measure")
    for r in rows:
        table.add_column(f"round {r['round']}")
    cells = [_cells(r) for r in rows]
    for i, name in enumerate(COLUMNS[1:], 1):
        table.add_row(name, *(c[i] for c in cells))
    console.print(table)


def write_loop_report(out: Path) -> Path:
    """OUT/report.html: the table and a plot across rounds, self-contained."""
    manifest, rows = _json(out / "loop.json") or {}, round_rows(out)
    head = "".join(f"<th>{escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in _cells(r)) + "</tr>" for r in rows)
    judged = [r for r in rows if r["vs_round_0"]]
    plot = lines([float(r["round"]) for r in judged],
                 {"win rate vs round 0": [r["vs_round_0"]["win_rate"] for r in judged],
                  "win rate vs previous": [r["vs_previous"]["win_rate"] for r in judged]},
                 "round", "win rate") if judged else "<p>no round evaluated yet</p>"
    steps = "".join(f"<tr><td>{escape(k)}</td><td>{escape(str(s.get('status')))}</td><td>{s.get('seconds', '-')}</td></tr>"
                    for k, s in manifest.get("steps", {}).items())
    html = (f"<!doctype html><meta charset='utf-8'><title>loop {escape(str(out))}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px;font-size:13px}"
            "table{border-collapse:collapse}</style>"
            f"<h1>Loop: {escape(str(manifest.get('rounds')))} round(s) from {escape(str(manifest.get('base')))}</h1>"
            f"<p>status {escape(str(manifest.get('status')))}, wall {manifest.get('wall_seconds', '-')} s; "
            f"settings {escape(json.dumps(manifest.get('loop', {})))}</p>"
            f"<h2>Per round</h2><table class='rounds'><tr>{head}</tr>{body}</table>"
            f"<h2>Win rate across rounds</h2>{plot}"
            f"<h2>Steps</h2><table><tr><th>step</th><th>status</th><th>seconds</th></tr>{steps}</table>")
    path = out / "report.html"
    path.write_text(html, encoding="utf-8")
    return path
