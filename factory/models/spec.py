"""A model spec, typed: `provider:name` as written in configs and on the command line, parsed once."""

from __future__ import annotations

import os
from dataclasses import dataclass

from factory.errors import FactoryError

PROVIDERS = ("local", "openai", "anthropic")
BASE_URL_ENV = {"openai": "OPENAI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL"}
SPEC_FORMS = """valid model specs:
  local:smollm2        the embedded SmolLM2-135M-Instruct (default; runs offline)
  local:PATH           any Hugging Face causal-LM folder
  openai:MODEL         OpenAI or any OpenAI-compatible server (OPENAI_API_KEY, OPENAI_BASE_URL)
  anthropic:MODEL      Anthropic (ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL)"""


@dataclass(frozen=True)
class ModelSpec:
    """`provider` (local, openai, anthropic) and `name` (a model name, `smollm2`, or a folder). Its
    identity, `str(spec)`, is the spec as written: the call cache, prices and manifests use it."""

    provider: str
    name: str

    @classmethod
    def parse(cls, spec: str, *, known: bool = True) -> ModelSpec:
        """`known=False` accepts any provider word (a test's fake model, say); a name is always needed."""
        provider, _, name = spec.partition(":")
        if not name or (known and provider not in PROVIDERS):
            raise FactoryError(f"unknown model spec {spec!r}\n{SPEC_FORMS}")
        return cls(provider, name)

    def __str__(self) -> str:
        return f"{self.provider}:{self.name}"

    @property
    def local(self) -> bool:
        """In this process (no network, no API key, no price)."""
        return self.provider == "local"

    @property
    def base_url(self) -> str | None:
        """Where an API provider's calls go: its SDK's base-URL variable, if set (else the SDK's default)."""
        env = BASE_URL_ENV.get(self.provider)
        return os.environ.get(env) if env else None
