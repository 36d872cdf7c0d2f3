"""The loop config: a pipeline YAML with a `loop:` section, typed, unknown keys rejected. Every check
that can fail on the user's input runs here, before any model loads, and names the file, line and field."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from factory.config import PipelineConfig, Strict
from factory.errors import InputError
from factory.inputs import PromptFile
from factory.records import prompt_id
from factory.yamlfile import Layers, load_layered, locate

OBJECTIVES = ("dpo", "kto", "sft", "grpo", "rloo")


class LoopSection(Strict):
    held_out: str = Field(description="JSONL prompts for evaluation; none may be a training prompt")
    objective: Literal["dpo", "kto", "sft", "grpo", "rloo"] = "dpo"
    train_config: str | None = Field(default=None, description="training settings YAML (grpo/rloo: its `rewards:`)")
    start_from: Literal["previous", "base"] = Field(default="previous",
                                                    description="each round trains from the last round's weights or the base's")
    judge: Literal["fixed", "self"] = Field(default="fixed", description="self: the policy judges its own answers")
    mix: float = Field(default=0.0, ge=0, le=1, description="share of each earlier round's training rows added")
    eval_judge: str | None = Field(default=None, description="eval judge: a model spec or vader:/hf: classifier "
                                                              "(default: the pipeline's judge model)")
    eval_limit: int | None = Field(default=None, ge=1)
    eval_samples: int = Field(default=1, ge=1, le=32)


class LoopFile(PipelineConfig):
    loop: LoopSection


class LoopConfig:
    """The validated loop: the pipeline (as `factory run` would read it) and the loop section."""

    def __init__(self, path: Path, pipeline: PipelineConfig, loop: LoopSection, layers: Layers):
        self.path, self.pipeline, self.loop, self._layers = path, pipeline, loop, layers

    def error(self, field: str, message: str) -> InputError:
        """An error at FIELD, named in the file that sets it (this one or one it extends)."""
        where, line = locate(self._layers, tuple(field.split(".")))
        return InputError(where, message, line=line, field=field)

    @property
    def base(self) -> str:
        return self.pipeline.model

    @property
    def judge_spec(self) -> str:
        j = self.pipeline.stages.judge
        return self.pipeline.model_for(j) if j is not None else self.pipeline.model

    @property
    def eval_judge(self) -> str:
        return self.loop.eval_judge or self.judge_spec


def load_loop(path: Path, rounds: int) -> LoopConfig:
    """Read and check CONFIG; raises InputError (exit 2) on bad input, before any model loads."""
    path = Path(path)
    if rounds < 1:
        raise InputError("--rounds", f"must be at least 1, got {rounds}")
    parsed, layers = load_layered(path, LoopFile)
    pipeline = PipelineConfig.model_validate(parsed.model_dump(exclude={"loop"}))
    pipeline._base_dir = path.resolve().parent
    cfg = LoopConfig(path, pipeline, parsed.loop, layers)
    _check(cfg)
    return cfg


def _check(cfg: LoopConfig) -> None:
    st, lp = cfg.pipeline.stages, cfg.loop
    if not cfg.base.startswith("local:"):
        raise cfg.error("model", f"the loop trains its policy, so the model must be local:smollm2 or local:PATH, "
                                 f"not {cfg.base}")
    if lp.objective in ("dpo", "kto") and st.judge is None:
        raise cfg.error("loop.objective", f"{lp.objective} trains on preferences, but the pipeline has no "
                                          "stages.judge to make them: add one, or use sft")
    if lp.objective == "kto" and not st.export.kto:
        raise cfg.error("loop.objective", "kto needs the kto dataset: set stages.export.kto: true")
    if lp.objective in ("grpo", "rloo") and lp.train_config is None:
        raise cfg.error("loop.objective", f"{lp.objective} needs loop.train_config: a YAML with its `rewards:`")
    if lp.judge == "self" and st.judge is None:
        raise cfg.error("loop.judge", "self-rewarding needs stages.judge (the policy fills it)")
    if lp.train_config is not None:
        from factory.train import resolve

        resolve(lp.objective, cfg.pipeline.path(lp.train_config))  # its own errors name its file and field
    held = cfg.pipeline.path(lp.held_out)
    if not held.is_file():
        raise cfg.error("loop.held_out", f"{held}: no such file")
    training: dict[str, tuple[Path, int]] = {}
    for seeds in st.questions.seeds:
        file = PromptFile(cfg.pipeline.path(seeds))
        for lineno, prompt, _ in file.lines():
            training.setdefault(prompt_id(prompt), (file.path, lineno))
    for lineno, prompt, _ in PromptFile(held).lines():
        if (where := training.get(prompt_id(prompt))) is not None:
            raise InputError(held, f"held-out prompt is also a training prompt ({where[0]}:{where[1]}); "
                                   "remove it from one of the files", line=lineno, field="prompt")
