"""Secrets never leave the process: every error-body shape and length, every place a message goes."""

from __future__ import annotations

import pytest
from conftest import KEY
from server import FakeAPIServer
from test_backends_http import SPECS, call

from factory.errors import FactoryError, ModelCallError
from factory.models import load_model
from factory.redaction import checked_base_url, clip, redact

# Where the key falls relative to the 300-character cut: before, across and after it.
PADS = [0, 1, 250, 280, 290, 295, 299, 300, 301, 310, 1000]
SHAPES = [
    "{pad}{key}",  # plain text echo
    "<html><body>{pad} bad key {key} </body></html>",  # an HTML error page
    '{{"detail": "{pad}{key}"}}',  # JSON, but not the provider's error shape
    '{{"error": "{pad}{key}"',  # broken JSON
    "{pad}Bearer {key}\n{key}",  # echoed twice
]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("shape", SHAPES)
def test_error_bodies_of_every_shape_and_length_never_carry_the_key(srv: FakeAPIServer, spec: str, shape: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAVILY_API_KEY", "tvly-other-secret-987")  # another secret the process holds
    for pad in PADS:
        body = shape.format(pad="x" * pad, key="{key}") + " tvly-other-secret-987"
        srv.inject_body(500 if pad % 2 else 400, body)
        with pytest.raises(ModelCallError) as info:
            call(load_model(spec))
        message = str(info.value)
        # no piece of either secret at all, not even the head of a cut one
        assert KEY[:8] not in message and "tvly-other" not in message, (pad, message)
        if pad <= 250:  # the placeholder itself fits before the cut
            assert "_API_KEY" in message, message


def test_clip_redacts_before_it_cuts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_SERVICE_TOKEN", "tok-1234567890abcdef")
    for pad in range(280, 305):
        out = clip("x" * pad + "tok-1234567890abcdef")
        assert "tok-1234" not in out and len(out) <= 303
    assert clip("short") == "short"


def test_url_credentials_are_secrets_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEARXNG_URL", "https://alice:hunter2-password@search.example.com/")
    out = redact("failed: https://alice:hunter2-password@search.example.com/ said hunter2-password")
    assert "hunter2" not in out and "$SEARXNG_URL:credentials" in out
    monkeypatch.setenv("X_API_KEY", "short")  # placeholders under 8 characters are left alone
    assert redact("a short word") == "a short word"


@pytest.mark.parametrize("url", ["https://user:sk-token-12345678@api.example.com/v1", "ftp://example.com",
                                 "not a url", "http://", "http://host:99999/v1"])
def test_a_base_url_that_cannot_work_is_refused_clearly(url: str) -> None:
    with pytest.raises(FactoryError) as info:
        checked_base_url("OPENAI_BASE_URL", url)
    assert "OPENAI_BASE_URL" in str(info.value) and "sk-token" not in str(info.value)


def test_openai_base_url_with_credentials_exits_2_without_traceback(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from factory.cli import cli

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://user:sk-token-12345678@127.0.0.1:9/v1")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    result = CliRunner().invoke(cli, ["run", "--model", "openai:gpt-test", "--prompts", str(prompts),
                                      "--out", str(tmp_path / "run")], standalone_mode=False)
    assert isinstance(result.exception, FactoryError), result.output
    assert "credentials" in str(result.exception) and "sk-token" not in str(result.exception)
    assert not (tmp_path / "run").exists()
