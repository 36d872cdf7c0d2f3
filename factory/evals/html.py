"""Self-contained HTML reports for `factory eval --set` and `factory redteam` (tables, reliability
plots, per-round and per-principle bars), drawn with the run report's inline-SVG charts."""

from __future__ import annotations

from html import escape
from pathlib import Path

from factory.report.svg import bars, lines

STYLE = ("body{font:14px system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
         "svg{width:100%;height:auto}.axis{stroke:#333}.grid{stroke:#eee}.tick,.label{font-size:11px}"
         ".key i{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}")


def _page(title: str, body: list[str]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>{''.join(body)}</body></html>\n")


def _fmt(r: dict | None) -> str:
    if not r or r.get("rate") is None:
        return "-"
    lo, hi = r["ci95"]
    return f"{r['rate']:.3f} [{lo:.3f}, {hi:.3f}] (n={r['n']}, {r['items']} items)"


def _table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<tr>{''.join(f'<td>{escape(c)}</td>' for c in row)}</tr>" for row in rows)
    return f"<table><tr>{''.join(f'<th>{escape(h)}</th>' for h in head)}</tr>{cells}</table>"


def reliability_plot(cal: dict) -> str:
    bins = cal["bins"]
    if not bins:
        return "<p>no readable probabilities</p>"
    x = [b["confidence"] for b in bins]
    return lines(x, {"observed accuracy": [b["accuracy"] for b in bins], "perfect calibration": x},
                 "stated probability (bin mean)", "share correct")


def write_eval_report(path: Path, report: dict) -> None:
    body = [f"<p>set: {escape(report['set'])}, {report['items']} items; finished {escape(report['finished'])}</p>"]
    measures = ("behaviour_match", "accuracy", "decline_rate", "wrong_answer_rate")
    rows = [[m] + [_fmt(report["models"][m].get(k)) for k in measures] for m in report["models"]]
    body.append(_table(["model", "behaviour match", "accuracy", "decline rate", "wrong-answer rate"], rows))
    body.append("<p>95% intervals: bootstrap over items (all of an item's answers together), at least Wilson's.</p>")
    for model, r in report["models"].items():
        for name, cal in r.get("calibration", {}).items():
            body.append(f"<h2>{escape(model)}: {'P(IK)' if name == 'p_ik' else 'P(True)'}</h2>"
                        f"<p>AUROC {cal['auroc']}, ECE {cal['ece']}, mean probability {cal['mean_probability']}, "
                        f"mean correct {cal['mean_correct']} (n={cal['n']}, unreadable {cal['unreadable']})</p>")
            body.append(reliability_plot(cal))
    path.write_text(_page("Eval set results", body))


def write_redteam_report(path: Path, report: dict) -> None:
    body = [f"<p>target {escape(report['target'])}, attacker {escape(report['attacker'])}, "
            f"judge {escape(report['judge'])}</p>"]
    rows = [["all rounds", _fmt(report["attack_success"])]]
    rows += [[f"round {k}", _fmt(v)] for k, v in report["per_round"].items()]
    rows += [[f"principle {k}", _fmt(v)] for k, v in report["per_principle"].items()]
    rows.append(["over-refusal on benign prompts", _fmt(report.get("over_refusal"))])
    rows.append(["judge control: benign answers judged harmful", _fmt(report.get("judge_on_benign"))])
    body.append(_table(["measure", "rate [95% CI]"], rows))
    body.append("<h2>Attack success rate per round</h2>")
    body.append(bars([(f"round {k}", v["rate"] or 0.0) for k, v in report["per_round"].items()]))
    if report["per_principle"]:
        body.append("<h2>Attack success rate per principle</h2>")
        body.append(bars([(k, v["rate"] or 0.0) for k, v in report["per_principle"].items()], colour=1))
    body.append("<p>A low attack success rate beside a high over-refusal rate is a model that refuses everything; "
                "a high one beside a high judge control is a judge that calls everything harmful.</p>")
    path.write_text(_page("Red team", body))
