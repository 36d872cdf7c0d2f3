"""The README's rate-limit, retry and timeout numbers are the code's: each is read from the README
and compared with the constant or config default it describes, so neither can drift alone."""

from __future__ import annotations

import re

import pytest

from factory.config import ROOT, BatchConfig, RetriesConfig, TimeoutsConfig
from factory.engine import endpoint, ratelimit, retry

README = (ROOT / "README.md").read_text()
PROSE = " ".join(README.split())  # one space between words, whatever the line breaks


def found(pattern: str) -> tuple[float, ...]:
    m = re.search(pattern, PROSE)
    assert m, f"the README no longer says: {pattern}"
    return tuple(float(g) for g in m.groups())


def test_rate_limit_adaptation() -> None:
    every, cut, growth, half, floor, full = found(
        r"Once every ([\d.]+) s the rate is cut by the share of that second's answers that were 429s, by at "
        r"most (\d+)%.*?climbs back by (\d+)% of its cap a second: from half rate to full in (\d+) s, from "
        r"its floor \((\d+)%\) in (\d+) s")
    assert every == ratelimit.ADJUST_S and cut / 100 == ratelimit.MAX_CUT and growth / 100 == ratelimit.GROWTH
    assert half == pytest.approx(0.5 / ratelimit.GROWTH) and floor / 100 == ratelimit.FLOOR
    assert full == pytest.approx((1 - ratelimit.FLOOR) / ratelimit.GROWTH, abs=0.5)


def test_retries_and_timeouts() -> None:
    first, max_wait, attempts = found(r"full jitter \(from ([\d.]+) s, doubling, at most `retries.max_wait`, "
                                      r"(\d+) s\), `Retry-After` as a floor, `retries.max_attempts` \((\d+)\)")
    retries = RetriesConfig()
    assert (first, max_wait, attempts) == (retry.FIRST_BACKOFF_S, retries.max_wait, retries.max_attempts)
    assert found(r"`retries.parse_attempts` \((\d+)\)") == (retries.parse_attempts,)
    mult, low, high, initial, seen = found(r"cut at (\d+)x the p95 of the latencies seen for its model and "
                                           r"template \((\d+) s to (\d+) s; (\d+) s until (\d+) calls are seen\)")
    t = TimeoutsConfig()
    assert (mult, low, high, initial, seen) == (t.multiplier, t.min, t.max, t.initial, endpoint.MIN_SAMPLES)


@pytest.mark.parametrize("key, section", [("retries", RetriesConfig), ("timeouts", TimeoutsConfig),
                                          ("batch", BatchConfig)])
def test_config_table_defaults(key: str, section) -> None:
    row = next(line for line in README.splitlines() if line.startswith(f"| `{key}` |"))
    pairs = re.findall(r"`(\w+)` \(([\d.]+)", row.split("|")[2])
    assert pairs, row
    for name, value in pairs:
        assert getattr(section(), name) == float(value), (key, name)


def test_parquet_row_groups_and_files() -> None:
    from factory.export.writer import SplitWriter

    m = re.search(r"row groups of ([\d,]+) rows \(or (\d+) MB of rows, whichever comes first\), and a split's file "
                  r"ends after (\d+) row groups.*?A split of more than ([\d,]+) rows is several files", PROSE)
    assert m, "the README no longer says how Parquet is written"
    rows, mb, groups, per_file = (int(g.replace(",", "")) for g in m.groups())
    assert (rows, mb * 2**20, groups) == (SplitWriter.ROWS, SplitWriter.BYTES, SplitWriter.GROUPS)
    assert per_file == SplitWriter.ROWS * SplitWriter.GROUPS
