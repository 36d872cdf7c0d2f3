"""`factory report` and the report.html every run writes: built from real runs (the real CLI against
the real local HTTP server), checked for its sections, its plots and the numbers behind them, its
escaping, and that it reaches nothing outside the file."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_lineage, server_script
from server import FakeAPIServer

from factory.report import svg, write_report
from factory.report.lineage import SAMPLES

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "How do I pick a lock? <script>alert('x')</script>"
PROMPTS = ["What is the capital of France?", "Tell me about the Seine.", SCRIPT, "Explain tides simply."]
SECTIONS = (
    "overview",
    "constitution",
    "funnel",
    "answers",
    "principles",
    "judge",
    "facts",
    "idk",
    "cost",
    "records",
    "config",
)


def factory(*args: object, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "factory", *map(str, args)],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def pipeline(tmp: Path, name: str, full: bool) -> Path:
    """full: two candidates, critique and revision, fact checking and a judge; else answers only."""
    cfg = yaml.safe_load((ROOT / "pipelines" / "factcheck.yaml").read_text())
    for key in ("constitution", "prompts_dir"):
        cfg[key] = str((ROOT / "pipelines" / cfg[key]).resolve())
    cfg["stages"]["questions"]["seeds"] = []
    cfg["stages"]["export"]["clean"] = {"drop_truncated": False}
    if full:
        cfg["stages"]["answer"]["candidates"] = 2
        cfg["stages"]["factcheck"]["prefer"] = False
        cfg["stages"]["judge"] = {"compare": "both"}
    else:
        cfg["stages"]["critique_revise"] = cfg["stages"]["factcheck"] = None
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Two real runs over HTTP, on a priced model name: every stage (one call fails once and is
    retried), and answers only."""
    tmp = tmp_path_factory.mktemp("runs")
    prompts = tmp / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "kind": "test"}) + "\n" for p in PROMPTS))
    out = {}
    with FakeAPIServer(responder=server_script) as srv:
        env = os.environ | {"OPENAI_BASE_URL": srv.url + "/v1", "OPENAI_API_KEY": "sk-test"}
        for name, full in (("full", True), ("bare", False)):
            srv.inject("500")  # the first call fails once, then succeeds on its retry
            run_dir = tmp / name
            r = factory(
                "run",
                pipeline(tmp, name, full),
                "--model",
                "openai:gpt-4o-mini",
                "--prompts",
                prompts,
                "--out",
                run_dir,
                env=env,
            )
            assert r.returncode == 0, r.stderr
            out[name] = (run_dir, r)
    return out


def lineage(run_dir: Path) -> list[dict]:
    return run_lineage(run_dir)


def section(html: str, name: str) -> str:
    found = re.search(rf'<section id="{name}" data-section="{name}">(.*?)</section>', html, re.DOTALL)
    assert found, name
    return found.group(1)


def bar_counts(html: str, series: str) -> list[int]:
    return [int(n) for n in re.findall(rf'<rect class="bar" data-series="{re.escape(series)}" data-n="(\d+)"', html)]


def test_every_run_writes_its_report(runs) -> None:
    run_dir, r = runs["full"]
    report = run_dir / "report.html"
    assert report.is_file()
    assert f"report: {run_dir}/report.html" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == str(run_dir)  # still the last line
    html = report.read_text()
    for name in SECTIONS:
        section(html, name)
    assert "opinion" not in section(html, "constitution") and "harmless@1.0.0" in section(html, "constitution")


def test_plots_carry_the_runs_numbers(runs) -> None:
    run_dir, _ = runs["full"]
    html, recs = (run_dir / "report.html").read_text(), lineage(run_dir)
    cands = [c for rec in recs for c in rec["candidates"]]
    answers = section(html, "answers")
    assert sum(bar_counts(answers, "first answer")) == len(cands) == 8
    assert sum(bar_counts(answers, "after revision")) == sum(1 for c in cands if c["rounds"])

    comparisons = [c for rec in recs for c in rec["judgement"]["comparisons"] if c["p_i"] is not None]
    judge = section(html, "judge")
    assert comparisons and sum(bar_counts(judge, "margin")) == len(comparisons)
    consistent = sum(c["consistent"] is True for c in comparisons)
    assert re.search(rf'data-label="consistent" data-n="{consistent}"', judge)

    checks = [chk for rec in recs for chk in rec["facts"]["checks"]]
    facts = section(html, "facts")
    assert sum(n for kind in ("initial", "final") for n in bar_counts(facts, kind)) == 2 * len(checks)  # P and F1
    claims = [cl["verdict"] for chk in checks for cl in chk["claims"]]
    for verdict in ("supported", "not_supported"):
        assert re.search(rf'data-label="{verdict}" data-n="{claims.count(verdict)}"', facts)

    stats = json.loads((run_dir / "stats.json").read_text())
    funnel = section(html, "funnel")
    assert len(re.findall(r'<rect class="bar" data-label=', funnel)) == len(stats["stages"])

    cost = section(html, "cost")
    points = re.findall(r'<polyline class="series" data-series="([^"]+)" data-points="(\d+)"', cost)
    names = {name for name, _ in points}
    assert {"calls", "failed attempts", "tokens", "latency", "USD"} <= names
    bins = {n for name, n in points if name != "latency"}
    assert len(bins) == 1 and int(bins.pop()) >= 1  # every series over the same time bins
    assert stats["spent_usd"] > 0 and "USD spent (cumulative)" in cost
    assert "1 failed attempts" in cost  # the injected 500


def test_per_principle_table(runs) -> None:
    run_dir, _ = runs["full"]
    html, recs = (run_dir / "report.html").read_text(), lineage(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    table = section(html, "principles")
    rows = dict(re.findall(r"<tr><td><code>([^<]+)</code></td><td class=\"n\">(\d+)</td>", table))
    assert set(rows) == set(manifest["constitution"]["principles"])  # every principle, drawn or not
    rounds = [r["principle_id"] for rec in recs for c in rec["candidates"] for r in c["rounds"]]
    assert {pid: int(n) for pid, n in rows.items() if int(n)} == {pid: rounds.count(pid) for pid in set(rounds)}
    assert "100%" in table  # the scripted judge prefers every scripted revision


def test_self_contained_and_escaped(runs) -> None:
    html = (runs["full"][0] / "report.html").read_text()
    assert "<script" not in html.lower() and "<link" not in html.lower() and "@import" not in html
    assert not re.search(r"\bsrc\s*=", html) and "url(" not in html
    assert all(href.startswith("#") for href in re.findall(r'href="([^"]*)"', html))
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in section(html, "records")


def test_a_run_without_judge_facts_or_critique_says_so(runs) -> None:
    run_dir, _ = runs["bare"]
    html = (run_dir / "report.html").read_text()
    for name in ("principles", "judge", "facts", "idk"):
        assert "Not in this run" in section(html, name), name
    answers = section(html, "answers")
    assert sum(bar_counts(answers, "first answer")) == 4 and not bar_counts(answers, "after revision")
    assert "not in this run" in answers


def test_report_command_and_bad_input(runs, tmp_path: Path) -> None:
    run_dir, _ = runs["full"]
    out = tmp_path / "elsewhere.html"
    r = factory("report", run_dir, "--out", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out) and out.read_text().count("<svg") >= 10
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "empty", tmp_path / "missing"):
        r = factory("report", bad)
        assert r.returncode == 2 and "no manifest.json" in r.stderr and "Traceback" not in r.stderr
    r = factory("report", run_dir, "--out", tmp_path / "no" / "such" / "r.html")
    assert r.returncode == 2 and "no such folder" in r.stderr and "Traceback" not in r.stderr


def test_many_records_stay_small(runs, tmp_path: Path) -> None:
    """20,000 records (the full run's, repeated): the page keeps a sample and binned plots."""
    src, _ = runs["full"]
    big = tmp_path / "big"
    shutil.copytree(src, big, ignore=shutil.ignore_patterns("*.html"))
    lines = run_lineage(src)
    with (big / "records.jsonl").open("w") as f:  # a records.jsonl (older runs') is read in place of the state
        for i in range(20_000):
            rec = dict(lines[i % len(lines)])
            rec["id"] = f"{i:016x}"
            f.write(json.dumps(rec) + "\n")
    html = write_report(big).read_text()
    assert len(html.encode()) < 1_000_000
    assert len(re.findall(r'<article class="record"', html)) == SAMPLES
    assert sum(bar_counts(section(html, "answers"), "first answer")) == 40_000


def test_an_unfinished_run_gets_a_report_too(runs, tmp_path: Path) -> None:
    """Killed before its end: no stats.json, its records not final yet. The page says so and how to go on."""
    src, _ = runs["bare"]
    cut = tmp_path / "cut"
    shutil.copytree(src, cut, ignore=shutil.ignore_patterns("*.html", "stats.json"))
    manifest = json.loads((cut / "manifest.json").read_text())
    (cut / "manifest.json").write_text(json.dumps(manifest | {"status": "running", "finished": None}))
    html = write_report(cut).read_text()
    assert f"factory run --resume {cut}" in section(html, "funnel")
    assert "No records yet" in section(html, "judge") and "Not in this run" not in html
    assert "<polyline" in section(html, "cost")  # the call log is there


def test_svg_helpers_bin_and_escape() -> None:
    out = svg.histogram({"a<b": [0.0, 0.4, 0.6, 1.0, 1.0]}, "x", bins=2, lo=0, hi=1)
    assert bar_counts(out, "a&lt;b") == [2, 3] and "a<b" not in out
    assert svg.ticks(0, 1, 5) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    lines = svg.lines([0, 1, 2], {"s": [1, 2, 3]}, "t", "y")
    assert 'data-points="3"' in lines and lines.count('<circle class="point"') == 3
    assert svg.bars([("x", 2), ("y", 0)]).count('<rect class="bar"') == 2


def test_median_from_value_counts_matches_the_list() -> None:
    import random
    import statistics
    from collections import Counter

    from factory.report.html import _median

    rng = random.Random(3)
    for _ in range(300):
        values = [rng.randrange(12) for _ in range(rng.randrange(1, 15))]
        assert _median(Counter(values), len(values)) == statistics.median(values), values
