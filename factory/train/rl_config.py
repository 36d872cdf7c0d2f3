"""The config of `factory train grpo|rloo`: the training settings every objective has, plus the
rollouts (group size, completion length, temperature, checkpoints) and the reward, declared as
weighted terms. Each term reuses the factory's own feedback code (see rewards.py):

    rewards:
      - {kind: teacher, scorer: vader:negative, mentions: [DogeMoon], where: prompt, weight: 1.0}
      - {kind: judge, model: openai:gpt-4o-mini, weight: 0.5}   # P(sample beats the reference answer)
      - {kind: idk, correct: 1.0, decline: 0.0, wrong: -1.0}     # against the prompts' `answers`
      - {kind: facts, metric: f1}                                # the fact-check stage's score
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from factory.config import AnchorConfig
from factory.train.config import TrainConfig


class Term(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: float = Field(default=1.0, description="the term's weight in the total reward")
    name: str | None = Field(default=None, description="column and metric name (default: the kind, numbered "
                             "when a kind repeats)")


class TeacherTerm(Term):
    """A classifier teacher: vader:positive|negative, hf:PATH:LABEL (a one-logit reward model scores its logit)."""

    kind: Literal["teacher"]
    scorer: str = Field(description="vader:positive, vader:negative or hf:PATH:LABEL")
    mentions: list[str] = Field(default_factory=list, description="applies only where one of these is named")
    regex: str | None = Field(default=None, description="or where this regular expression matches")
    where: Literal["answer", "prompt"] = Field(default="prompt", description="what `mentions`/`regex` test: the "
                                               "sample, or its prompt (then every sample of a matching prompt)")
    everywhere: bool = Field(default=False, description="apply to every sample (no topic rule); say so explicitly")
    neutral: float = Field(default=0.0, description="the value of a sample the teacher does not apply to")
    anchor: AnchorConfig | None = Field(
        default=None, description="score each sample by minus its distance from the mean score of a reference "
        "model's answers to its prompt (sampled as the rollouts are): holds each prompt's own level, a tone, "
        "instead of pushing it")

    @model_validator(mode="after")
    def _rule(self) -> TeacherTerm:
        if not self.everywhere and not self.mentions and self.regex is None:
            raise ValueError("a teacher needs a topic rule: `mentions: [...]` or `regex: ...` (with `where: "
                             "prompt|answer`), or `everywhere: true` to score every sample")
        if self.everywhere and (self.mentions or self.regex is not None):
            raise ValueError("`everywhere: true` and a topic rule (`mentions`/`regex`) contradict each other")
        return self


class JudgeTerm(Term):
    """Direct RLAIF: P(sample beats the reference model's answer) under a principle drawn per comparison,
    both orders, from the judge's A/B log-probs (parsed verdicts where a backend has none)."""

    kind: Literal["judge"]
    model: str | None = Field(default=None, description="judge model spec (default: the pipeline's judge or model)")
    reference: str | None = Field(default=None, description="model spec that writes the reference answers "
                                  "(default: the model being trained, as it starts)")


class IdkTerm(Term):
    """Against the prompts' reference answers (the IDK stage's matching): correct, decline, wrong."""

    kind: Literal["idk"]
    correct: float = 1.0
    decline: float = 0.0
    wrong: float = -1.0
    answers_field: str = Field(default="answers", description="the prompts' field with the reference answers")


class FactsTerm(Term):
    """The fact-check stage's score of the sample (claims, search, verdicts)."""

    kind: Literal["facts"]
    metric: Literal["f1", "precision"] = Field(default="f1", description="F1@K or precision")
    no_claims: float = Field(default=0.0, description="the value of a sample with no checkable claim")


RewardTerm = Annotated[TeacherTerm | JudgeTerm | IdkTerm | FactsTerm, Field(discriminator="kind")]


NOT_RL = {"max_length", "evaluate", "eval_batch_size", "reference", "template"}  # TrainConfig's fields grpo and rloo refuse


class RLConfig(TrainConfig):
    batch_size: int = Field(default=8, ge=1, description="completions per device per step (a multiple of "
                            "num_generations)")
    beta: float = Field(default=0.04, ge=0, description="KL penalty toward the frozen starting model (0: none)")
    logging_steps: int = Field(default=1, ge=1, description="steps between log lines (and metrics.jsonl rows)")
    num_generations: int = Field(default=4, ge=2, description="samples per prompt (the group)")
    max_completion_length: int = Field(default=64, ge=1, description="tokens per sample")
    temperature: float = Field(default=1.0, gt=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    steps_per_generation: int | None = Field(default=None, ge=1, description="optimiser steps per generation "
                                             "round (default: grad_accum)")
    loss_type: str | None = Field(default=None, description="GRPO's loss (default TRL's: dapo)")
    scale_rewards: Literal["group", "batch", "none"] | None = Field(default=None, description="GRPO: normalise "
                                                                    "advantages by the group's std (default)")
    save_steps: int = Field(default=10, ge=1, description="checkpoint every N steps (a kill loses at most N)")
    save_total_limit: int = Field(default=2, ge=1, description="checkpoints kept during the run")
    keep_checkpoints: bool = Field(default=False, description="keep every OUT/checkpoint-N, during the run and after "
                                   "it (save_total_limit then unused), for `factory pick` to choose one on a "
                                   "validation set")
    use_vllm: bool = Field(default=False, description="generate with vLLM (GPU; `vllm_mode: colocate`)")
    vllm_mode: Literal["colocate", "server"] = "colocate"
    pipeline: str | None = Field(default=None, description="pipeline YAML for the constitution, templates, judge, "
                                 "idk and fact-check settings (default: DATA if it is one, else the default)")
    max_prompts: int | None = Field(default=None, ge=1, description="use at most this many prompts")
    report_prompts: int = Field(default=3, ge=0, description="fixed prompts answered at start, middle and end "
                                "for report.html")
    rewards: list[RewardTerm] = Field(default_factory=list, description="the reward: weighted terms (at least one, "
                                      "here or in the file this one extends)")

    @model_validator(mode="after")
    def _check(self) -> RLConfig:
        unused = sorted(NOT_RL & self.model_fields_set)
        if unused:
            raise ValueError(f"{', '.join(unused)}: not used by grpo and rloo (the length of a sample is "
                             "max_completion_length; evaluate with `factory eval`; the KL reference is the "
                             "starting model; the prompt's template is the pipeline's answer template)")
        if self.batch_size % self.num_generations:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of num_generations "
                             f"({self.num_generations}): each step trains on whole groups")
        names = term_names(self.rewards)
        if len(set(names)) != len(names):
            raise ValueError(f"reward term names repeat: {names}; give each a distinct `name`")
        return self


def term_names(terms: list) -> list[str]:
    """Each term's name: its `name`, else its kind (kind_2, kind_3 ... when a kind repeats)."""
    seen: dict[str, int] = {}
    out = []
    for t in terms:
        seen[t.kind] = seen.get(t.kind, 0) + 1
        out.append(t.name or (t.kind if seen[t.kind] == 1 else f"{t.kind}_{seen[t.kind]}"))
    return out
