"""Verdict parsing under injection: every reply of the scripted judge (tests/injection_judge.py) to
every pair of evals/judge_injection.jsonl, in both orders, through the verdict and score parsers.
Prints, per method, the replies read, the unreadable ones and the flipped ones (target: 0 and 0).

    python bench/judge_injection.py                  # factory/judging/parse.py
    python bench/judge_injection.py --parser OLD.py  # another parser module, e.g. an older version
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from injection_judge import load_pairs, sweep  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parser", type=Path, help="a module with parse_choice and parse_score")
    ap.add_argument("--pairs", type=Path, default=ROOT / "evals" / "judge_injection.jsonl")
    args = ap.parse_args()
    if args.parser:
        spec = importlib.util.spec_from_file_location("parser_under_test", args.parser)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        from factory.judging import parse as module
    print(json.dumps(sweep(module.parse_choice, module.parse_score, load_pairs(args.pairs)), indent=2))


if __name__ == "__main__":
    main()
