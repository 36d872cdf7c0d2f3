"""Fuzzed inputs, timed: every case of tests/fuzz_inputs.py (prompts files, configs, constitutions)
through the real CLI entry point in this process, against the local test server. Prints, per kind,
the cases rejected (exit 2) and accepted, any other outcome (a traceback, another exit code, a run
directory left behind by a rejection), and the slowest rejection (target: under 5 s).

    python bench/fuzz_inputs.py --mutations 300 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fuzz_inputs import cases, run_cli  # noqa: E402
from server import FakeAPIServer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mutations", type=int, default=100, help="random mutations per kind, besides the fixed tricks")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    counts: Counter[str] = Counter()
    slowest: dict[str, float] = {}
    bad: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, FakeAPIServer(record=False) as srv:
        os.environ.update(OPENAI_BASE_URL=srv.url + "/v1", OPENAI_API_KEY="sk-fuzz-bench-key",
                          FACTORY_CACHE_DIR=str(Path(tmp) / "cache"))
        for kind, argv, out in cases(Path(tmp) / "cases", args.seed, args.mutations):
            code, err, seconds = run_cli(*argv)
            if code == 2:
                counts[f"{kind} rejected"] += 1
                slowest[kind] = max(slowest.get(kind, 0.0), seconds)
                if out.exists():
                    bad.append(f"{kind}: rejected but left {out}")
            elif code in (0, 1):
                counts[f"{kind} accepted"] += 1
            else:
                bad.append(f"{kind}: exit {code}: {err[:200]}")
            if "Traceback" in err:
                bad.append(f"{kind}: traceback: {err[:200]}")
    print(json.dumps({"counts": dict(sorted(counts.items())), "slowest_rejection_s": {
        k: round(v, 3) for k, v in slowest.items()}, "problems": bad}, indent=2))


if __name__ == "__main__":
    main()
