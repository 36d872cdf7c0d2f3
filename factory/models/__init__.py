"""Model backends, chosen by a spec string such as `local:smollm2` or `openai:gpt-4o-mini`."""

from __future__ import annotations

from factory.errors import FactoryError
from factory.models.base import Completion, GenParams, Message, Model

__all__ = ["SPEC_FORMS", "Completion", "GenParams", "Message", "Model", "load_model"]

SPEC_FORMS = """valid model specs:
  local:smollm2        the embedded SmolLM2-135M-Instruct (default; runs offline)
  local:PATH           any Hugging Face causal-LM folder
  openai:MODEL         OpenAI or any OpenAI-compatible server (OPENAI_API_KEY, OPENAI_BASE_URL)
  anthropic:MODEL      Anthropic (ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL)"""


def load_model(spec: str) -> Model:
    """Build the backend a spec names. Unknown specs list the valid forms."""
    kind, _, name = spec.partition(":")
    if not name:
        raise FactoryError(f"unknown model spec {spec!r}\n{SPEC_FORMS}")
    if kind == "local":
        from factory.models.local import LocalModel

        return LocalModel.from_spec(spec, name)
    if kind == "openai":
        from factory.models.openai_backend import OpenAIModel

        return OpenAIModel(spec, name)
    if kind == "anthropic":
        from factory.models.anthropic_backend import AnthropicModel

        return AnthropicModel(spec, name)
    raise FactoryError(f"unknown model spec {spec!r}\n{SPEC_FORMS}")
