"""An endpoint that goes away pauses the run instead of failing records: the real CLI entry point
against the real local HTTP server, which stops listening and drops open connections, then returns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import api_config, write_prompts
from test_failures import factory_main, sft_rows

from factory.config import OutageConfig
from factory.engine.outage import EndpointDown, Outage
from factory.errors import ModelCallError

PROMPTS = [f"Question number {i}: how do I look after a {w}?" for i, w in
           enumerate(["cat", "dog", "fern", "bike", "violin", "garden", "tent", "kettle", "roof", "boat"])]
FAST = {"after_failures": 3, "max_probe_s": 0.5}


def start(monkeypatch, capsys, tmp_path: Path, out: Path, **outage) -> tuple[int, str]:
    cfg = api_config(tmp_path, outage=FAST | outage, watchdog_s=2)
    code, _, err = factory_main(monkeypatch, capsys, "run", cfg, "--model", "openai:m", "--prompts",
                                write_prompts(tmp_path / "p.jsonl", PROMPTS), "--concurrency", "4", "--out", out)
    return code, err


@pytest.fixture
def clean(api, tmp_path: Path, monkeypatch, capsys) -> Path:
    out = tmp_path / "clean"
    code, err = start(monkeypatch, capsys, tmp_path, out)
    assert code == 0, err
    return out


def test_a_short_outage_pauses_and_the_run_completes_unchanged(api, clean: Path, tmp_path: Path, monkeypatch,
                                                               capsys) -> None:
    thread = api.outage_after(10, 3.0)
    out = tmp_path / "run"
    code, err = start(monkeypatch, capsys, tmp_path, out, max_down_s=60)
    thread.join()
    assert code == 0, err
    assert "down since" in err and "Traceback" not in err  # the progress note said so
    assert (out / "failed.jsonl").read_text() == ""
    assert sft_rows(out) == sft_rows(clean)
    with __import__("sqlite3").connect(out / "calls.sqlite") as db:  # the attempts that met the outage are logged
        assert db.execute("SELECT count(*) FROM errors").fetchone()[0] >= 3


def test_a_long_outage_stops_resumably_then_resumes_unchanged(api, clean: Path, tmp_path: Path, monkeypatch,
                                                              capsys) -> None:
    thread = api.outage_after(10, 4.0)
    out = tmp_path / "run"
    code, err = start(monkeypatch, capsys, tmp_path, out, max_down_s=1.5)
    assert code == 4, err
    assert "no answer since" in err and f"factory run --resume {out}" in err and "Traceback" not in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "stopped_endpoint_down"
    assert not (out / "failed.jsonl").exists() or (out / "failed.jsonl").read_text() == ""
    thread.join()  # the endpoint is back
    code, _, err = factory_main(monkeypatch, capsys, "run", "--resume", out)
    assert code == 0, err
    assert (out / "failed.jsonl").read_text() == ""
    assert sft_rows(out) == sft_rows(clean)


def test_record_level_failures_still_fail_records(api, tmp_path: Path, monkeypatch, capsys) -> None:
    api.inject("400")  # an answer, not an outage
    code, err = start(monkeypatch, capsys, tmp_path, tmp_path / "run")
    assert code == 1, err
    failed = (tmp_path / "run" / "failed.jsonl").read_text().splitlines()
    assert len(failed) == 1 and "400" in failed[0]


def test_outage_state_machine() -> None:
    """Down after `after_failures` attempts in a row with no answer; one probe at a time; up on any answer."""
    import asyncio

    async def go() -> None:
        o = Outage("openai:m", OutageConfig(after_failures=2, max_probe_s=0.05, max_down_s=0.5))
        assert not o.failed(False) and not o.down
        o.answered(False)  # an answer breaks the streak
        assert not o.failed(False) and o.failed(False) and o.down
        first, second = asyncio.create_task(o.turn()), asyncio.create_task(o.turn())
        await asyncio.sleep(0.15)
        assert first.result() is True and not second.done() and o.waiting == 1  # one probe; the other waits
        o.answered(True)
        assert await second is False and not o.down and await o.turn() is False
        o.failed(False), o.failed(False)
        with pytest.raises(EndpointDown):
            while True:
                probe = await o.turn()
                o.failed(probe)

    asyncio.run(go())
    assert issubclass(EndpointDown, Exception) and not issubclass(EndpointDown, ModelCallError)


def test_a_search_backend_that_stops_answering_pauses_too(tmp_path: Path) -> None:
    """Eight attempts in a row with no answer, against 3 search attempts: without the pause the search
    (and its record) would fail; with it, the search waits and gets its passages."""
    import asyncio

    from conftest import make_caller

    from factory.engine.calllog import CallLog
    from factory.search import Passage, SearchBackend

    class Flaky(SearchBackend):
        name = "flaky"

        def __init__(self) -> None:
            self.calls = 0

        def key(self) -> str:
            return "flaky:test"

        async def search(self, query: str, k: int) -> list[Passage]:
            self.calls += 1
            if self.calls <= 8:
                raise ModelCallError("flaky: no response from http://x: Connection refused", retryable=True)
            return [Passage(title="t", text="found", source="s", score=1.0)]

    log = CallLog(tmp_path / "calls.sqlite")
    caller = make_caller({}, log, outage={"after_failures": 2, "max_probe_s": 0.01, "max_down_s": 30})
    caller.search_attempts = 3
    backend = Flaky()
    passages = asyncio.run(caller.search("factcheck", backend, "q", 1))
    log.close()
    assert [p.text for p in passages] == ["found"] and backend.calls == 9
    assert caller.search_outages["flaky:test"].outages == 1 and not caller.search_outages["flaky:test"].down



def test_a_stages_stats_pickle_after_its_endpoint_was_down() -> None:
    """A Ray shard returns its stats to the driver pickled. A stage whose endpoint was held back keeps
    the live Outage for the progress line, and its event is bound to the shard's uvloop loop, which
    cannot be pickled (a 10^5-record Ray run failed on it)."""
    import asyncio
    import pickle

    import uvloop

    from factory.engine.stats import StageStats

    async def go() -> StageStats:
        st = StageStats(calls=3, outage=Outage("openai:m", OutageConfig(after_failures=1)))
        st.outage.failed(False)
        probe, held = asyncio.create_task(st.outage.turn()), asyncio.create_task(st.outage.turn())
        await asyncio.sleep(0.01)  # one call probes, the other waits for the endpoint to come back
        probe.cancel(), held.cancel()
        return st

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        st = runner.run(go())
    with pytest.raises(TypeError):
        pickle.dumps(st.outage)
    back = pickle.loads(pickle.dumps(st))
    assert back.calls == 3 and back.outage is None and st.outage is not None
