"""Model backends, chosen by a spec string such as `local:smollm2` or `openai:gpt-4o-mini`."""

from __future__ import annotations

from factory.models.base import Completion, GenParams, Message, Model
from factory.models.spec import SPEC_FORMS, ModelSpec

__all__ = ["SPEC_FORMS", "Completion", "GenParams", "Message", "Model", "ModelSpec", "load_model"]


def load_model(spec: str) -> Model:
    """Build the backend a spec names. Unknown specs list the valid forms."""
    parsed = ModelSpec.parse(spec)
    kind, name = parsed.provider, parsed.name
    if kind == "local":
        from factory.models.local import LocalModel

        return LocalModel.from_spec(spec, name)
    if kind == "openai":
        from factory.models.openai_backend import OpenAIModel

        return OpenAIModel(spec, name)
    if kind == "anthropic":
        from factory.models.anthropic_backend import AnthropicModel

        return AnthropicModel(spec, name)
