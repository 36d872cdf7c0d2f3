"""Fuzzed prompts files, configs and constitutions through the real CLI entry point (in process),
against the real local HTTP server: no traceback, every rejection exit 2 with no run directory left
behind; an input that happens to be valid runs (exit 0 or 1). bench/fuzz_inputs.py times the same
cases (target: every rejection under 5 s)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzz_inputs import cases, run_cli


@pytest.mark.parametrize("kind", ["constitution", "config", "prompts"])
def test_fuzzed_inputs_are_refused_cleanly(api, tmp_path: Path, kind: str) -> None:
    rejected = accepted = 0
    for k, args, out in cases(tmp_path, seed=0, n=25):
        if k != kind:
            continue
        code, err, _ = run_cli(*args)
        assert "Traceback" not in err and code in (0, 1, 2), (args, code, err)
        if code == 2:
            rejected += 1
            assert err.startswith("error: ") and not out.exists(), (args, err)
        else:
            accepted += 1
    assert rejected >= 30, (rejected, accepted)
