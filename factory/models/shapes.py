"""Per-model request shapes for OpenAI (openai_models.yaml, next to prices.yaml): which models take
max_completion_tokens instead of max_tokens, and which reject sampling parameters, logprobs or stop
sequences. One table, read once; the online and the Batch API requests both follow it."""

from __future__ import annotations

from functools import cache

from pydantic import Field

from factory.config import ROOT, Strict
from factory.yamlfile import load_yaml

SHAPES = ROOT / "openai_models.yaml"


class Shape(Strict):
    max_completion_tokens: bool = Field(default=False, description="send the limit as max_completion_tokens")
    sampling: bool = Field(default=True, description="send temperature and top_p")
    logprobs: bool = Field(default=True, description="may ask for logprobs")
    stop: bool = Field(default=True, description="may send stop sequences")


class Shapes(Strict):
    openai: dict[str, Shape] = Field(default_factory=dict)

    def openai_shape(self, model: str) -> Shape:
        """The model's shape: its own entry, else its family's longest prefix, else the classic one."""
        if model in self.openai:
            return self.openai[model]
        prefixes = [name for name in self.openai if model.startswith(name + "-")]
        return self.openai[max(prefixes, key=len)] if prefixes else Shape()


@cache
def shapes() -> Shapes:
    return load_yaml(SHAPES, Shapes)
