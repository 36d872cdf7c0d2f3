"""What a run keeps in memory: a local run against the real test server never imports pandas or
transformers (about 40 and 15 MB of RSS it would hold to its end; bench/throughput.py measures the
whole process), and the export's Arrow tables are the ones `Table.from_pylist` would build."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa

from factory.export.writer import arrow_table, schemas

ROOT = Path(__file__).resolve().parent.parent

RUN = """
import json, sys
sys.path.insert(0, {tests!r})
from server import FakeAPIServer
from factory import cli
code = None
with FakeAPIServer() as srv:
    import os
    os.environ.update(OPENAI_BASE_URL=srv.url + "/v1", OPENAI_API_KEY="sk-test")
    sys.argv = ["factory", "run", "--model", "openai:m", "--prompts", {prompts!r}, "--out", {out!r}]
    try:
        cli.main()
    except SystemExit as e:
        code = e.code
print(json.dumps({{"code": code, "loaded": [m for m in ("pandas", "transformers") if m in sys.modules]}}))
"""


def test_a_local_run_imports_neither_pandas_nor_transformers(tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(6)))
    out = tmp_path / "run"
    script = RUN.format(tests=str(ROOT / "tests"), prompts=str(prompts), out=str(out))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "loaded": []}
    assert list((out / "sft").glob("*.parquet"))  # the export ran, and wrote its Parquet


BARS = """
import sys
from factory.liblog import LibraryLog, transformers_imported
with LibraryLog().capture():
    assert "transformers" not in sys.modules
    from transformers.utils import logging
    transformers_imported()
    inside = logging.is_progress_bar_enabled()
print(inside, logging.is_progress_bar_enabled())
"""


def test_transformers_progress_bars_are_off_inside_a_capture_that_did_not_import_it() -> None:
    env = {k: v for k, v in os.environ.items() if "PROGRESS_BARS" not in k}  # importing factory.cli sets them
    proc = subprocess.run([sys.executable, "-c", BARS], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]


def test_arrow_table_is_what_from_pylist_builds() -> None:
    schema = schemas()["prefs"].append(pa.field("review", pa.string()))
    turns = [{"role": "user", "content": "Ünïcode \"quoted\"\nline ✓"}, {"role": "assistant", "content": ""}]
    full = {"prompt": turns, "chosen": turns[1:], "rejected": [], "score_chosen": 7, "score_rejected": 2.5,
            "p_chosen": float("nan"), "margin": None, "position_consistent": True, "judge_model": "m",
            "judge_principle_ids": ["a", "b"], "prompt_id": "0" * 32, "principle_ids": [], "constitution": "c",
            "constitution_hash": "h", "generator_model": "g", "fact_precision": 0.5, "fact_f1": None,
            "review": "accepted"}
    sparse = {"prompt": turns, "chosen": None, "unknown_key": 1}  # missing keys are null, unknown ones ignored
    rows = [full, sparse]
    built = arrow_table([json.dumps(r, ensure_ascii=False) + "\n" for r in rows], schema)
    expected = pa.Table.from_pylist(rows, schema=schema)
    assert built.schema == expected.schema
    got, want = built.to_pylist(), expected.to_pylist()
    assert math.isnan(got[0].pop("p_chosen")) and math.isnan(want[0].pop("p_chosen"))
    assert got == want


def test_the_local_executor_does_not_import_pyarrow_until_it_exports() -> None:
    script = "import sys, factory.executors.dispatch, factory.executors.local; print('pyarrow' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
