"""Prompt inputs: JSONL, Parquet and Hugging Face datasets; single prompts, conversations with a
system prompt, the Human/Assistant text layout; several sources mixed at a ratio."""

from factory.inputs.mix import Prompts
from factory.inputs.source import PromptFile, read_prompts

__all__ = ["PromptFile", "Prompts", "read_prompts"]
