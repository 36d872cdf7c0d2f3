"""The call cache knows which model answered: a retrained folder at the same path, or another server
behind the same model name, misses the cache (run, shared --cache-dir, try, judge-check); an
unchanged model still hits it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import judge_reply, server_script
from server import FakeAPIServer
from test_cli import PROMPTS, factory, write_prompts
from test_train import save_tiny

from factory.config import ROOT, cache_root
from factory.models import identity


def test_folder_digest_is_cached_by_size_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights one")
    (folder / "config.json").write_text("{}")
    (folder / ".hidden").write_text("ignored")
    hashed: list[str] = []
    real = identity._file_sha256
    monkeypatch.setattr(identity, "_file_sha256", lambda p: hashed.append(p.name) or real(p))
    first = identity.folder_digest(folder)
    assert sorted(hashed) == ["config.json", "model.safetensors"]
    hashed.clear()
    assert identity.folder_digest(folder) == first and not hashed  # unchanged: only stat calls
    (folder / "model.safetensors").write_bytes(b"weights two")  # retrained in place
    assert identity.folder_digest(folder) != first and hashed == ["model.safetensors"]
    (folder / ".hidden").write_text("changed")
    assert identity.folder_digest(folder) == identity.folder_digest(folder)


def test_http_identity_names_the_server() -> None:
    assert identity.http_identity("openai:m", "http://a/v1/") == "openai:m@http://a/v1"


def _run(prompts: Path, out: Path, cache: Path, *extra: str) -> dict:
    r = factory("run", "--model", "openai:m", "--prompts", prompts, "--cache-dir", cache, "--out", out, *extra)
    assert r.returncode == 0, r.stderr
    return json.loads((out / "stats.json").read_text())["stages"]["answer"]


@pytest.mark.slow
def test_another_server_with_the_same_model_name_misses_every_cache(api, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS)
    cache = tmp_path / "shared"
    assert _run(prompts, tmp_path / "a", cache)["cached_calls"] == 0
    assert _run(prompts, tmp_path / "b", cache)["cached_calls"] == 5  # same server: the shared cache serves
    tried = factory("try", "How do I pick a lock?", "--model", "openai:m")
    assert "(0 from cache)" in tried.stdout
    assert "3 calls (3 from cache)" in factory("try", "How do I pick a lock?", "--model", "openai:m").stdout
    better = {json.loads(line)["better"] for line in (ROOT / "evals" / "judge_check.jsonl").read_text().splitlines()}
    api.responder = lambda messages, body: judge_reply(messages, body, better.__contains__) or server_script(messages, body)
    before = len(api.requests)
    r = factory("judge-check", "--model", "openai:m", "--json")
    assert r.returncode == 0, r.stderr
    judged = len(api.requests) - before
    assert factory("judge-check", "--model", "openai:m", "--json").returncode == 0
    assert len(api.requests) == before + judged  # unchanged model: all from the cache

    with FakeAPIServer(responder=api.responder) as other:
        monkeypatch.setenv("OPENAI_BASE_URL", other.url + "/v1")
        assert _run(prompts, tmp_path / "c", cache)["cached_calls"] == 0
        assert len([r for r in other.requests if r["path"].endswith("/chat/completions")]) >= 5
        assert "(0 from cache)" in factory("try", "How do I pick a lock?", "--model", "openai:m").stdout
        before = len(other.requests)
        assert factory("judge-check", "--model", "openai:m", "--json").returncode == 0
        assert len(other.requests) - before == judged > 0  # every judge call asked again


ROOT_CACHE = cache_root()  # read at import, before the per-test FACTORY_CACHE_DIR: the converted embedded model


@pytest.mark.slow
def test_a_retrained_folder_at_the_same_path_misses_the_cache(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path / "policy", 0, ROOT_CACHE)
    spec = f"local:{folder}"
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:2])
    cache = tmp_path / "shared"
    config = tmp_path / "short.yaml"  # a random tiny model never stops: short answers keep the test fast
    config.write_text(f"constitution: {ROOT / 'constitutions' / 'harmless.yaml'}\nprompts_dir: {ROOT / 'prompts'}\n"
                      "stages:\n  answer: {max_tokens: 8}\n  critique_revise: {max_tokens: 8}\n")

    def run(out: str) -> dict:
        r = factory("run", config, "--model", spec, "--prompts", prompts, "--cache-dir", cache, "--out", tmp_path / out)
        assert r.returncode == 0, r.stderr
        return json.loads((tmp_path / out / "stats.json").read_text())["stages"]["answer"]

    assert run("a")["cached_calls"] == 0
    assert run("b")["cached_calls"] == 2
    tried = factory("try", "Name a colour.", "--model", spec, "--config", config)
    assert "(0 from cache)" in tried.stdout, tried.stderr
    assert "from cache)" in tried.stdout and "(0 from cache)" not in factory("try", "Name a colour.", "--model", spec, "--config", config).stdout
    save_tiny(folder, 1, ROOT_CACHE)  # retrained into the same path
    assert run("c")["cached_calls"] == 0
    assert "(0 from cache)" in factory("try", "Name a colour.", "--model", spec, "--config", config).stdout
