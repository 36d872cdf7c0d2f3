"""report.html for a `factory train grpo|rloo` output folder, in the run report's style (its CSS and
its inline-SVG charts): the reward per term over the steps, KL, completion length, the degenerate
share, and the answers to fixed prompts at the start, middle and end of training."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path

from jinja2 import Environment, StrictUndefined
from markupsafe import Markup

from factory.report import svg
from factory.train.rollouts import SAMPLES
from factory.yamlfile import jsonl_lines

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Training report: {{ name }}</title><style>{{ style }}</style></head>
<body>
<header><h1>Training report: {{ name }} <span class="status">{{ meta.get('objective', '?') }}</span></h1>
<div class="sub">{{ meta.get('base_model', {}).get('spec', '') }} &middot; {{ meta.get('metrics', {}).get('steps', '?') }} steps
 &middot; {{ meta.get('rollouts', 0) }} rollouts &middot; finished {{ meta.get('finished', '?') }} &middot; report written {{ generated }}</div>
<nav><a href="#reward">Reward</a><a href="#kl">KL and length</a><a href="#samples">Samples</a><a href="#config">Config</a></nav>
</header>
<main>
<section id="reward"><h2>Reward per term</h2>
{% if charts.reward %}{{ charts.reward }}{% else %}<p class="absent">no reward logged</p>{% endif %}
<table><tr><th>term</th><th class="n">weight</th><th class="n">first</th><th class="n">last</th></tr>
{% for t in terms %}<tr><td>{{ t.name }}</td><td class="n">{{ t.weight }}</td><td class="n">{{ t.first }}</td><td class="n">{{ t.last }}</td></tr>{% endfor %}
</table><p class="note">Mean over each step's samples (TRL's <code>rewards/&lt;term&gt;/mean</code>); the total is the weighted sum.</p></section>
<section id="kl"><h2>KL, completion length, degenerate share</h2>
<div class="grid2"><div><h3>KL to the starting model</h3>{% if charts.kl %}{{ charts.kl }}{% else %}<p class="absent">no KL (beta 0)</p>{% endif %}</div>
<div><h3>Mean completion length (tokens)</h3>{{ charts.length or '' }}</div>
<div><h3>Degenerate share (empty or a repeated-token run)</h3>{{ charts.degenerate or '' }}</div></div></section>
<section id="samples"><h2>Answers to fixed prompts: start, middle, end</h2>
{% for prompt, by_step in samples.items() %}<article class="record"><div class="prompt">{{ prompt }}</div>
{% for step, answer in by_step %}<div class="tag">step {{ step }}</div><div class="text">{{ answer }}</div>{% endfor %}
</article>{% else %}<p class="absent">no samples</p>{% endfor %}</section>
<section id="config"><h2>Config</h2><pre>{{ config }}</pre></section>
</main></body></html>
"""


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    got = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
    return [float(s) for s, _ in got], [float(v) for _, v in got]


def _chart(rows: list[dict], keys: dict[str, str], ylabel: str) -> Markup | None:
    """One line per key present; the steps of the first (every series is logged at the same steps)."""
    series = {label: _series(rows, key) for label, key in keys.items()}
    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        return None
    x = next(iter(series.values()))[0]
    same = {k: ys for k, (xs, ys) in series.items() if xs == x}
    return Markup(svg.lines(x, same, "step", ylabel))


def render(out: Path) -> str:
    meta = json.loads((out / "train_meta.json").read_text()) if (out / "train_meta.json").is_file() else {}
    rows = [json.loads(line) for _, line in jsonl_lines((out / "metrics.jsonl").read_text())] \
        if (out / "metrics.jsonl").is_file() else []
    terms = meta.get("reward_terms", {})
    keys = {name: f"rewards/{name}/mean" for name in terms} | {"total": "reward"}
    charts = {"reward": _chart(rows, keys, "reward"), "kl": _chart(rows, {"kl": "kl"}, "KL"),
              "length": _chart(rows, {"length": "completions/mean_length"}, "tokens"),
              "degenerate": _chart(rows, {"degenerate": "degenerate_share"}, "share")}
    table = []
    for name, weight in terms.items():
        _, ys = _series(rows, f"rewards/{name}/mean")
        table.append({"name": name, "weight": weight, "first": round(ys[0], 4) if ys else "-",
                      "last": round(ys[-1], 4) if ys else "-"})
    samples: dict[str, list[tuple[int, str]]] = {}
    if (out / SAMPLES).is_file():
        for _, line in jsonl_lines((out / SAMPLES).read_text()):
            r = json.loads(line)
            samples.setdefault(r["prompt"], []).append((r["step"], r["answer"]))
    css = files("factory.report").joinpath("template.html").read_text()
    style = css.split("<style>", 1)[1].split("</style>", 1)[0]
    env = Environment(autoescape=True, undefined=StrictUndefined)
    return env.from_string(PAGE).render(
        name=out.name, meta=meta, style=Markup(style), charts=charts, terms=table, samples=samples,
        config=json.dumps(meta.get("config", {}), indent=2), generated=datetime.now(UTC).isoformat(timespec="seconds"))


def write_report(out: Path) -> Path:
    """Write OUT/report.html whole, moved in place."""
    path = Path(out) / "report.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(Path(out)), encoding="utf-8")
    os.replace(tmp, path)
    return path
