"""`factory review` and `factory export`: the review app driven in a real headless browser (Debian's
chromium through Playwright) over a real run made by the CLI against the local test server (judge
in both orders, fact check with evidence), its JSON API, and exports that honour the decisions."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import run_lineage, server_script
from datasets import load_dataset

from factory.review.server import build_app, start
from factory.review.store import ReviewStore

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
HAIKU = "A careful, kind haiku: soft drops tap the roof, the garden drinks."
PROMPTS = ["How do I pick a lock?", "Write a haiku about rain.", "Write a haiku about snow.",
           "How can I get revenge on my neighbour?", "Explain photosynthesis simply.", "What is the capital of France?",
           "Tell me about the Seine.", "What is a good first programming language?"]


def script(messages: list[dict], body: dict):
    """The test server's scripted model, with three twists: both haiku prompts get the same revision
    (so export drops one as a duplicate), the Seine's texts are never "careful" (the judge ties, so no
    pair), and France's first answers are (so they claim nothing false)."""
    user, reply = messages[-1]["content"], server_script(messages, body)
    if not isinstance(reply, str):
        return reply
    if reply.startswith("Here is a revised response:") and "haiku" in user:
        return HAIKU
    if reply.startswith("Here is a revised response:") and "Seine" in user:
        return "The Seine is a river that runs through Paris."
    if reply.startswith("Initial answer to: What is the capital of France"):
        return "A careful answer: the capital of France is Paris."
    return reply


def factory(*args: object, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "factory", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env, check=False)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict]]:
    """A finished run (two candidates, a judge, fact checking) and the environment that reaches its server."""
    from server import FakeAPIServer

    tmp = tmp_path_factory.mktemp("review")
    cfg = yaml.safe_load((ROOT / "pipelines" / "default.yaml").read_text())
    for key in ("constitution", "prompts_dir"):
        cfg[key] = str((ROOT / "pipelines" / cfg[key]).resolve())
    cfg["stages"]["questions"]["seeds"] = [str((ROOT / "pipelines" / s).resolve()) for s in cfg["stages"]["questions"]["seeds"]]
    cfg["stages"]["answer"]["candidates"] = 2
    cfg["stages"]["judge"] = {}
    cfg["stages"]["factcheck"] = {"target": "both", "max_claims": 4, "queries": 1, "f1_k": 3, "search": {"k": 2}}
    cfg["stages"]["export"] |= {"kto": True, "reward": True}
    (tmp / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    (tmp / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    with FakeAPIServer(responder=script) as srv:
        env = os.environ | {"OPENAI_BASE_URL": srv.url + "/v1", "OPENAI_API_KEY": "sk-test",
                            "FACTORY_CACHE_DIR": str(tmp / "cache")}
        r = factory("run", tmp / "pipeline.yaml", "--model", "openai:test-model", "--prompts", tmp / "prompts.jsonl",
                    "--out", tmp / "run", env=env)
        assert r.returncode == 0, r.stderr
        yield tmp / "run", env


@pytest.fixture
def run_dir(made: tuple[Path, dict], tmp_path: Path) -> Path:
    """A fresh copy of the finished run for each test: decisions never leak between tests."""
    return Path(shutil.copytree(made[0], tmp_path / "run"))


class Served:
    """The review app in this process, on a free port, in its own thread and event loop."""

    def __init__(self, run_dir: Path):
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            self.runner, self.url = self.loop.run_until_complete(start(build_app(run_dir), 0))
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        assert ready.wait(30), "the review server did not start"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def lineage(run_dir: Path) -> dict[str, dict]:
    return {r["id"]: r for r in run_lineage(run_dir)}


def margin(rec: dict) -> float | None:
    pairs = (rec.get("judgement") or {}).get("pairs") or []
    return max(2 * p["p_chosen"] - 1 for p in pairs) if pairs else None


def rows_of(run_dir: Path, config: str) -> list[dict]:
    return [row for split in load_dataset(str(run_dir), config).values() for row in split]


# --- the browser ---------------------------------------------------------------------------------

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
EDIT = "Plants turn sunlight, water and air into sugar; a reviewer wrote this answer."


def launch(p):
    """Chromium, with Playwright's assertions waiting up to 20 s instead of 5: with a model training
    on the other core, a 5-second wait is the likely cause of this file's one unexplained failure."""
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)
    return p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (`make test` installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.mark.browser
def test_review_in_a_browser_then_export(run_dir: Path, browser) -> None:
    from playwright.sync_api import expect
    from trl.data_utils import is_conversational

    recs = lineage(run_dir)
    by_prompt = {r["prompt"]: r["id"] for r in recs.values()}
    (duplicate,) = [d for c in map(json.loads, (run_dir / "dedup.jsonl").read_text().splitlines()) for d in c["dropped"]]
    served = Served(run_dir)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(served.url)
        page.wait_for_selector("body[data-ready]")
        items = page.locator("#list li")
        expect(items).to_have_count(len(recs))

        # filters: outcome, drop reason, margin, fact verdict, principle
        page.select_option("select[name=outcome]", "dropped:export")
        expect(items).to_have_count(1)
        expect(items.first).to_contain_text(recs[duplicate]["prompt"])
        page.click("button[type=reset]")
        expect(items).to_have_count(len(recs))
        page.select_option("select[name=reason]", "exact_duplicate_response")
        expect(items).to_have_count(1)
        page.click("button[type=reset]")
        page.fill("input[name=min_margin]", "0.5")
        wide = [r for r in recs.values() if (margin(r) or -9) >= 0.5]
        assert 0 < len(wide) < len(recs)
        expect(items).to_have_count(len(wide))
        expect(page.locator("#list")).not_to_contain_text("Tell me about the Seine.")  # a tie: no pair, no margin
        page.click("button[type=reset]")
        page.select_option("select[name=fact]", "not_supported")
        false = [r for r in recs.values() if any(c["verdict"] == "not_supported" for k in r["facts"]["checks"]
                                                 for c in k["claims"])]
        assert 0 < len(false) < len(recs)
        expect(items).to_have_count(len(false))
        expect(page.locator("#list")).not_to_contain_text("What is the capital of France?")
        page.click("button[type=reset]")
        principle = "controversial-balance"
        shaped = [r for r in recs.values() if principle in {x["principle_id"] for c in r["candidates"] for x in c["rounds"]}
                  | {c["principle_id"] for c in r["judgement"]["comparisons"]}]
        assert 0 < len(shaped) < len(recs)
        page.select_option("select[name=principle]", principle)
        expect(items).to_have_count(len(shaped))
        page.click("button[type=reset]")
        expect(items).to_have_count(len(recs))

        # open a record: prompt, answers, critiques, word diffs, both orders of the judge, fact verdicts
        items.filter(has_text="How do I pick a lock?").click()
        detail = page.locator("#detail")
        expect(detail.locator(".prompt")).to_have_text("How do I pick a lock?")
        expect(detail).to_contain_text("The response could be more careful and kinder.")
        expect(detail.locator(".diff del").first).to_have_text("Initial")
        expect(detail.locator(".diff ins").first).to_have_text("A careful, kind")
        expect(detail.locator(".verdict", has_text="(A) #0, (B) #1")).to_have_count(1)
        expect(detail.locator(".verdict", has_text="(A) #1, (B) #0")).to_have_count(1)
        claim = detail.locator(".claim", has_text="Paris was founded on the Moon in 1999.").first
        expect(claim.locator(".badge")).to_have_text("not supported")
        claim.locator("summary").click()
        expect(claim.locator(".evidence").first).to_be_visible()
        expect(page).to_have_url(served.url + "#" + by_prompt["How do I pick a lock?"])

        # accept (a), next (j) and reject (r), next twice and edit (e, ctrl+enter)
        page.keyboard.press("a")
        expect(page.locator(".bar .badge.accepted")).to_have_text("accepted")
        expect(items.filter(has_text="How do I pick a lock?").locator(".badge.accepted")).to_have_count(1)
        page.keyboard.press("j")
        expect(detail.locator(".prompt")).to_have_text("Write a haiku about snow.")
        page.keyboard.press("r")
        expect(page.locator(".bar .badge.rejected")).to_have_text("rejected")
        page.keyboard.press("j")
        page.keyboard.press("n")
        expect(detail.locator(".prompt")).to_have_text("Explain photosynthesis simply.")
        page.keyboard.press("e")
        editor = detail.locator("textarea")
        expect(editor).to_have_value("A careful, kind answer to: Explain photosynthesis simply.")
        editor.fill(EDIT)
        editor.press("a")  # typing in the editor is not a shortcut
        editor.fill(EDIT)
        editor.press("Control+Enter")
        expect(page.locator(".notice")).to_have_text("Edit saved.")
        expect(detail.locator(".target.edited")).to_have_text(EDIT)
        expect(page.locator(".bar .badge.edited")).to_have_text("edited")

        # two tabs on one record: the second's stale write is refused and it shows the current state
        other = by_prompt["What is a good first programming language?"]
        second = browser.new_page()
        second.goto(served.url + "#" + other)
        second.wait_for_selector("body[data-ready]")
        page.keyboard.press("k")
        expect(detail.locator(".prompt")).to_have_text("Write a haiku about rain.")
        items.filter(has_text="What is a good first programming language?").click()
        page.get_by_role("button", name="Accept (a)").click()
        expect(page.locator(".bar .badge.accepted")).to_have_text("accepted")
        second.keyboard.press("r")
        expect(second.locator(".notice")).to_contain_text("changed in another tab")
        expect(second.locator(".bar .badge.accepted")).to_have_text("accepted")

        page.reload()
        page.wait_for_selector("body[data-ready]")
        expect(page.locator("#counts")).to_have_text("accepted 2 · edited 1 · rejected 1")
        page.select_option("select[name=decision]", "edited")
        expect(items).to_have_count(1)
        assert not errors, errors
    finally:
        served.close()

    store = ReviewStore(run_dir)
    assert store.get(other).decision == "accepted" and store.get(other).version == 1
    store.close()

    r = factory("export", run_dir)
    assert r.returncode == 0, r.stderr
    assert "human_rejected: 1" in r.stdout
    snow, rain = by_prompt["Write a haiku about snow."], by_prompt["Write a haiku about rain."]
    edited = by_prompt["Explain photosynthesis simply."]
    sft = {row["prompt_id"]: row for row in rows_of(run_dir, "sft")}
    assert snow not in sft and rain in sft  # rejected before dedup: its twin stays
    assert sft[edited]["messages"][-1]["content"] == EDIT and sft[edited]["human_review"] == "edited"
    assert sft[edited]["fact_f1"] is None  # nobody checked the reviewer's text
    assert {sft[i]["human_review"] for i in (by_prompt["How do I pick a lock?"], other)} == {"accepted"}
    assert sum(row["human_review"] is None for row in sft.values()) == len(sft) - 3
    prefs = [row for row in rows_of(run_dir, "prefs")]
    assert snow not in {row["prompt_id"] for row in prefs}
    (pair,) = [row for row in prefs if row["prompt_id"] == edited]
    assert pair["chosen"][0]["content"] == EDIT and pair["rejected"][0]["content"].startswith("Initial answer to")
    assert is_conversational(pair) and is_conversational(sft[edited])
    (reward,) = [row for row in rows_of(run_dir, "reward") if row["prompt_id"] == edited]
    assert reward["chosen"][-1]["content"] == EDIT
    kto = {row["label"]: row for row in rows_of(run_dir, "kto") if row["prompt_id"] == edited}
    assert kto[True]["completion"][0]["content"] == EDIT and kto[False]["completion"][0]["content"] != EDIT
    card = (run_dir / "README.md").read_text()
    assert "## Human review" in card and "| accepted | 2 |" in card
    assert "| rejected (left out of every dataset) | 1 |" in card and "replaces the model's final answer) | 1 |" in card
    stats = json.loads((run_dir / "stats.json").read_text())
    assert stats["stages"]["export"]["dropped"]["human_rejected"] == 1
    assert stats["datasets"]["sft"] == json.loads((run_dir / "manifest.json").read_text())["datasets"]["sft"]


# --- the API, served by the real CLI -------------------------------------------------------------


def call(url: str, method: str = "GET", body: object = None, headers: dict | None = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"} | (headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        return e.code, json.loads(text) if e.headers.get_content_type() == "application/json" else text


def test_cli_serves_the_api_and_refuses_stale_writes(run_dir: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "factory", "review", str(run_dir), "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert " at http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split(" at ", 1)[1].split()[0]
        status, info = call(url + "api/run")
        assert status == 200 and info["records"] == 8 and info["facets"]["outcome"] == {"exported": 7, "dropped:export": 1}
        record_id = next(iter(lineage(run_dir)))
        put = url + f"api/records/{record_id}/decision"
        status, saved = call(put, "PUT", {"version": 0, "decision": "accepted", "note": "fine"})
        assert status == 200 and saved["decision"]["version"] == 1 and saved["decision"]["label"] == "accepted"
        status, stale = call(put, "PUT", {"version": 0, "decision": "rejected"})  # a tab that saw version 0
        assert status == 409 and stale["decision"]["decision"] == "accepted" and stale["decision"]["note"] == "fine"
        status, _ = call(put, "PUT", {"version": 1, "decision": "accepted", "edited_answer": "  "})
        assert status == 400
        status, text = call(put, "PUT", b"decision=rejected", {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 415 and "application/json" in text
        status, _ = call(put, "PUT", {"version": 1, "decision": "maybe"})
        assert status == 400
        status, text = call(url + "api/run", headers={"Host": "attacker.example"})  # DNS rebinding
        assert status == 403
        assert call(url + "api/records/0000000000000000")[0] == 404
        assert call(url + "api/records?min_margin=high")[0] == 400
        status, listed = call(url + "api/records?decision=accepted")
        assert status == 200 and [r["id"] for r in listed["records"]] == [record_id]
        with urllib.request.urlopen(url, timeout=10) as page:
            html = page.read().decode()
            assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        assert "/static/app.js" in html and "http" not in html.replace("http-equiv", "")  # nothing from the network
    finally:
        proc.terminate()
        proc.wait(10)


def test_review_and_export_need_a_finished_run(tmp_path: Path) -> None:
    for command in ("review", "export"):
        r = factory(command, tmp_path)
        assert r.returncode == 2 and "not a run directory (no manifest.json)" in r.stderr and "Traceback" not in r.stderr


# --- exports ---------------------------------------------------------------------------------------


def test_export_without_decisions_writes_the_same_datasets(run_dir: Path) -> None:
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.glob("*/*.parquet")}
    card = (run_dir / "README.md").read_text()
    r = factory("export", run_dir)
    assert r.returncode == 0, r.stderr
    assert {p.relative_to(run_dir): p.read_bytes() for p in run_dir.glob("*/*.parquet")} == before
    assert (run_dir / "README.md").read_text() == card and "Human review" not in card
    assert not (run_dir / "review.sqlite").exists()


def test_resuming_a_run_applies_its_decisions(made: tuple[Path, dict], run_dir: Path) -> None:
    recs = lineage(run_dir)
    exported = len(rows_of(run_dir, "sft"))
    rejected = next(r["id"] for r in recs.values() if r["prompt"] == "How do I pick a lock?")
    store = ReviewStore(run_dir)
    store.put(rejected, 0, "rejected", None, "")
    store.close()
    r = factory("run", "--resume", run_dir, env=made[1])
    assert r.returncode == 0, r.stderr
    sft = rows_of(run_dir, "sft")
    assert rejected not in {row["prompt_id"] for row in sft} and len(sft) == exported - 1
    assert {row["human_review"] for row in sft} == {None}
    assert json.loads((run_dir / "stats.json").read_text())["stages"]["export"]["dropped"]["human_rejected"] == 1


def test_merge_applies_each_runs_decisions(run_dir: Path, tmp_path: Path) -> None:
    exported = len(rows_of(run_dir, "sft"))
    rejected = next(r["id"] for r in lineage(run_dir).values() if r["prompt"] == "How do I pick a lock?")
    store = ReviewStore(run_dir)
    store.put(rejected, 0, "rejected", None, "")
    store.close()
    r = factory("merge", run_dir, "--out", tmp_path / "merged")
    assert r.returncode == 0, r.stderr
    sft = rows_of(tmp_path / "merged", "sft")
    assert rejected not in {row["prompt_id"] for row in sft} and len(sft) == exported - 1
    assert "Human review" in (tmp_path / "merged" / "README.md").read_text()


# --- the index on disk -----------------------------------------------------------------------------


def test_the_index_pages_and_filters_from_disk_and_is_rebuilt_when_the_run_changes(run_dir: Path) -> None:
    from factory.review.index import FILE
    from factory.review.runview import RunView

    recs = lineage(run_dir)
    view = RunView(run_dir)
    built = (run_dir / FILE).stat().st_mtime_ns
    total, first = view.page({}, 0, 3)
    _, rest = view.page({}, 3, 100)
    assert total == len(recs) == 8 and [s["id"] for s in first + rest] == sorted(recs)
    assert view.page({}, 100, 5) == (8, [])

    def ids(**q: str) -> set[str]:
        n, found = view.page(q, 0, 5000)
        assert n == len(found)
        return {s["id"] for s in found}

    principle = recs[first[0]["id"]]["candidates"][0]["rounds"][0]["principle_id"]
    assert ids(principle=principle) >= {i for i, r in recs.items()
                                        if any(rnd["principle_id"] == principle for c in r["candidates"]
                                               for rnd in c["rounds"])}
    assert ids(q="HAIKU") == {i for i, r in recs.items() if "haiku" in r["prompt"].lower()}
    assert ids(min_margin="0.1") == {i for i, r in recs.items() if (m := margin(r)) is not None and m >= 0.1}
    assert ids(outcome="dropped:export") == {i for i, r in recs.items() if "snow" in r["prompt"] or "rain" in r["prompt"]
                                             } - ids(outcome="exported")
    assert ids(fact="no_such_verdict") == set() and ids(decision="rejected") == set()
    view.close()

    store = ReviewStore(run_dir)
    rejected = sorted(recs)[2]
    store.put(rejected, 0, "rejected", None, "")
    store.close()
    view = RunView(run_dir)  # decisions are read live; the run did not change, so the index stands
    assert (run_dir / FILE).stat().st_mtime_ns == built
    assert ids(decision="rejected") == {rejected} and view.decision_counts() == {"rejected": 1, "none": 7}
    assert view.page({"decision": "none"}, 0, 2)[0] == 7
    view.close()

    os.utime(run_dir / "failed.jsonl")  # what a retry-failed or a resume leaves: the index is built again
    RunView(run_dir).close()
    assert (run_dir / FILE).stat().st_mtime_ns != built
