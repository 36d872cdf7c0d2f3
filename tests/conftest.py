"""Shared test fixtures. ScriptedModel is a fake for unit-testing stage logic only; everything
end to end uses the real local HTTP server (tests/server.py) or the real embedded model."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from factory.config import ROOT, PipelineConfig
from factory.engine.caller import Caller
from factory.engine.calllog import CallLog
from factory.engine.endpoint import Endpoint
from factory.engine.prices import Budget, load_prices
from factory.engine.ratelimit import RateLimiter
from factory.engine.stats import Stats
from factory.models import Completion, GenParams, Message, Model

sys.path.insert(0, str(Path(__file__).parent))


def run_lineage(run_dir: Path) -> list[dict]:
    """A finished run's done and dropped records (its lineage, in state.sqlite), as dicts, in id order."""
    import json

    from factory.engine.rundir import RunDir

    return [json.loads(line) for line in RunDir.open(run_dir).lineage_json()]


def kind_of(messages: list[Message]) -> str:
    """Which template a request came from, judged by how its user message ends."""
    last = messages[-1]["content"].rstrip()
    if last.endswith("Critique:"):
        return "critique"
    if last.endswith("Revised response:"):
        return "revision"
    if last.endswith("one per line."):
        return "questions"
    return "answer"


def default_script(messages: list[Message], params: GenParams) -> str:
    """A plausible, deterministic model: answers, critiques, revisions with boilerplate, questions."""
    kind = kind_of(messages)
    user = messages[-1]["content"]
    if kind == "answer":
        return f"Initial answer to: {user[:40]}"
    if kind == "critique":
        return "The response could be more careful and kinder."
    if kind == "revision":
        request = user.rsplit("Request:", 1)[1].split("\n", 1)[0].strip()
        return f"Here is a revised response: A careful, kind answer to: {request[:40]}"
    return "\n".join(f"{i}. How do I make task number {params.seed} {i} easier?" for i in range(1, 6))


class ScriptedModel(Model):
    def __init__(self, script: Callable[[list[Message], GenParams], str] = default_script, spec: str = "fake:scripted"):
        self.spec, self.script = spec, script
        self.calls: list[tuple[list[Message], GenParams]] = []

    async def complete(self, messages: list[Message], params: GenParams) -> Completion:
        self.calls.append((messages, params))
        await asyncio.sleep(0)
        text = self.script(messages, params)
        return Completion(text, sum(len(m["content"].split()) for m in messages), len(text.split()), "stop")


@pytest.fixture
def scripted() -> ScriptedModel:
    return ScriptedModel()


def make_caller(models: dict[str, Model], log: CallLog, stats: Stats | None = None, concurrency: int = 8,
                **config) -> Caller:
    """A Caller with real endpoints (default retries, timeouts, no rate limit, no budget)."""
    cfg = PipelineConfig(constitution="unused", concurrency=concurrency, **config)
    endpoints = {spec: Endpoint(m, concurrency, RateLimiter(), cfg.retries, cfg.timeouts, load_prices(), Budget(None),
                                cfg.outage) for spec, m in models.items()}
    return Caller(endpoints, log, stats or Stats(["questions", "answer", "critique_revise", "export"]),
                  parse_attempts=cfg.retries.parse_attempts, outage=cfg.outage)


def drain(source, caller: Caller) -> list:
    """All the records a streaming source produces."""
    async def go() -> list:
        return [rec async for rec in source.produce(caller)]

    return asyncio.run(go())


@pytest.fixture
def caller(tmp_path: Path, scripted: ScriptedModel) -> Caller:
    log = CallLog(tmp_path / "calls.sqlite")
    yield make_caller({"fake:scripted": scripted}, log)
    log.close()


@pytest.fixture(autouse=True, scope="session")
def _offline_hf(tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test reaches a hub, and `datasets` caches into a throwaway folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("HF_DATASETS_OFFLINE", "1")
    mp.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf-datasets")))
    yield
    mp.undo()


@pytest.fixture
def repo() -> Path:
    return ROOT


@pytest.fixture(autouse=True)
def _isolated_cache(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`factory try` caches calls in FACTORY_CACHE_DIR: give each test its own. Tests on the embedded
    model (marked `model`) keep the shared cache, where the converted embedded model lives."""
    if request.node.get_closest_marker("model") is None:
        monkeypatch.setenv("FACTORY_CACHE_DIR", str(tmp_path / "cache"))


JUDGE_OPTIONS = re.compile(r"\(A\) <<<(.*?)>>>\s*\(B\) <<<(.*?)>>>", re.DOTALL)


def last_user(messages: list[dict]) -> str:
    """The last user turn's text (an Anthropic request may end with the assistant's prefill)."""
    content = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    return content if isinstance(content, str) else "".join(b.get("text", "") for b in content)


def judge_reply(messages: list[dict], body: dict, better: Callable[[str], bool]):
    """A judge over HTTP: (A) or (B), whichever `better` accepts, with logprobs when asked; None if
    the request is not a judge's."""
    from server import Reply

    found = JUDGE_OPTIONS.search(last_user(messages))
    if not found:
        return None
    a, b = (better(t) for t in found.groups())
    p_a = 0.5 if a == b else 0.9 if a else 0.1
    return Reply("A" if p_a >= 0.5 else "B", logprobs={"A": math.log(p_a), "B": math.log(1 - p_a)}
                 if body.get("logprobs") else None)


QUIZ = {"France": "Paris", "Japan": "Tokyo"}  # what the scripted model knows; other questions it gets wrong


def facts_reply(messages: list[dict]) -> str | None:
    """The fact-check and IDK templates, recognised by how they end (None for anything else). First
    answers claim one false fact; the scripted revisions ("A careful, kind answer") only true ones."""
    user = last_user(messages).rstrip()
    if user.endswith("Claims:"):
        text = user.rsplit("Text:", 1)[1]
        true = "- Paris is the capital of France."
        return true if "careful" in text else f"{true}\n- Paris was founded on the Moon in 1999."
    if user.endswith("Queries:"):
        return "capital city of France"
    if user.endswith("Verdict:"):
        claim = user.rsplit("Claim:", 1)[1].split("\n", 1)[0]
        return "Not supported" if "Moon" in claim else "Supported [1]"
    if user.endswith("Correct:"):  # the idk judge: right when the answer names a reference
        refs = user.split("Reference answers:", 1)[1].split("\n", 1)[0].split(";")
        return "yes" if any(r.strip() in user.rsplit("Answer to grade:", 1)[1] for r in refs) else "no"
    if "quiz" in messages[0]["content"]:  # the short answer template
        return next((f"It is {a}." for country, a in QUIZ.items() if country in user), "I believe it is Atlantis.")
    return None


def server_script(messages: list[dict], body: dict):
    """The scripted model, served over HTTP by the real test server. Its judge prefers the scripted
    revisions ("A careful, kind answer")."""
    verdict = judge_reply(messages, body, lambda text: "careful" in text)
    return verdict or facts_reply(messages) or default_script(messages, GenParams(seed=body.get("seed")))


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch):
    """The real local HTTP server, with the env the OpenAI and Anthropic SDKs read."""
    from server import FakeAPIServer

    with FakeAPIServer(responder=server_script) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET123")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-SECRET456")
        yield srv


KEY = "sk-test-SECRET123"


@pytest.fixture
def srv(monkeypatch: pytest.MonkeyPatch):
    """The real local HTTP server with its default responder, and the env both SDKs read."""
    from server import FakeAPIServer

    with FakeAPIServer() as server:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        yield server


@contextlib.contextmanager
def openai_server(monkeypatch: pytest.MonkeyPatch, **settings):
    """The real local HTTP server with these settings (a responder, a token counter...), and the env
    the OpenAI backend reads."""
    from server import FakeAPIServer

    with FakeAPIServer(**settings) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        yield srv
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`slow`: a test that runs a whole CLI command (a `factory(...)` helper, `cli_run`), launches a process
    (`factory_process`, `start`, `subprocess`: each start costs seconds of imports), or uses a fixture
    that does (`runs`, `made`) or that builds the offline search index (`wiki`). Other slow tests are
    marked by hand."""
    for item in items:
        code = getattr(getattr(item, "function", None), "__code__", None)
        if (code is not None and LAUNCHERS & set(code.co_names)) or SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


LAUNCHERS = {"factory", "factory_process", "subprocess", "cli_run", "start"}
SLOW_FIXTURES = {"runs", "made", "wiki"}
