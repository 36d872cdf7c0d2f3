"""Pipeline config: a YAML file naming the constitution, the models and each stage's parameters.

Relative paths in a config resolve against the config file's folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from factory.yamlfile import load_yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "pipelines" / "default.yaml"
DEFAULT_CONSTITUTION = ROOT / "constitutions" / "harmless.yaml"


def cache_root() -> Path:
    """`FACTORY_CACHE_DIR`, else `~/.cache/constitution-factory`: the converted model, `try`'s call cache."""
    env = os.environ.get("FACTORY_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "constitution-factory"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Sampling(Strict):
    model: str | None = Field(default=None, description="model spec for this stage; defaults to the pipeline's")
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int = Field(default=256, ge=1)


class QuestionsConfig(Sampling):
    seeds: list[str] = Field(default_factory=list, description="JSONL seed prompt files")
    include_seeds: bool = Field(default=True, description="the seed prompts themselves are records too")
    max_seeds: int | None = Field(default=None, ge=0, description="use a seeded sample of this many seed prompts")
    generate: int = Field(default=0, ge=0, description="how many new prompts to generate from the seeds")
    examples_per_call: int = Field(default=4, ge=1, description="seed prompts shown per generation call")
    questions_per_call: int = Field(default=5, ge=1, description="new prompts asked for per call")
    max_calls: int | None = Field(default=None, ge=1, description="cap on generation calls (default 3x needed)")
    template: str = "questions"
    temperature: float = Field(default=1.0, ge=0, le=2)


class AnswerConfig(Sampling):
    candidates: int = Field(default=1, ge=1, le=16)
    template: str = "answer"


class CritiqueReviseConfig(Sampling):
    rounds: int = Field(default=1, ge=1, le=4)
    few_shot: int = Field(default=2, ge=0, description="constitution examples shown per call")
    critique_template: str = "critique"
    revision_template: str = "revision"


class TeacherConfig(Strict):
    scorer: str = Field(description="vader:positive, vader:negative or hf:PATH:LABEL")
    mentions: list[str] = Field(default_factory=list, description="apply only to answers naming one of these")
    regex: str | None = Field(default=None, description="or matching this regular expression")
    scale: float = Field(default=5.0, gt=0, description="P(i better) = sigmoid(scale x (score_i - score_j))")


class JudgeConfig(Sampling):
    """The judge: compares answers under principles drawn from the constitution's `judge` texts."""

    compare: Literal["initial", "final", "both"] = Field(
        default="both", description="which texts of each candidate are options: first answers, revisions, or both")
    method: Literal["choice", "cot", "score"] = Field(
        default="choice", description="(A)/(B) choice, chain of thought (clamped to [0.4, 0.6]), or a 1-10 score")
    principles: int = Field(default=1, ge=1, le=8, description="principles drawn per comparison (an ensemble)")
    samples: int = Field(default=1, ge=1, le=16, description="verdicts sampled where the backend gives no logprobs")
    pairs: Literal["best_worst", "all_pairs"] = "best_worst"
    ranking: Literal["bradley_terry", "wins"] = "bradley_terry"
    teacher: TeacherConfig | None = Field(default=None, description="a classifier that ranks the answers it applies to")
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_tokens: int = Field(default=8, ge=1, description="choice and score need a few tokens; cot needs hundreds")
    template: str = "judge"
    cot_template: str = "judge_cot"
    score_template: str = "judge_score"

    @model_validator(mode="after")
    def _check(self) -> JudgeConfig:
        if self.samples > 1 and self.temperature == 0:
            raise ValueError("samples > 1 needs temperature > 0 (greedy verdicts are all the same)")
        if self.method == "cot" and self.max_tokens < 64:
            raise ValueError("method 'cot' needs max_tokens of at least 64 for the reasoning")
        return self


class ExportConfig(Strict):
    test_fraction: float = Field(default=0.1, ge=0, le=1)
    license: str = Field(default="other", description="license field of the dataset card")
    min_margin: float = Field(default=0.0, ge=0, le=1, description="judged pairs: drop those with 2p-1 below this")
    consistent_only: bool = Field(default=False, description="judged pairs: keep only position-consistent ones")
    kto: bool = Field(default=False, description="also write a `kto` config: prompt, completion, label")
    reward: bool = Field(default=False, description="also write a `reward` config: implicit prompts and a margin")


class LimitsConfig(Strict):
    rpm: float | None = Field(default=None, gt=0, description="requests per minute (default: from the provider's headers)")
    tpm: float | None = Field(default=None, gt=0, description="tokens per minute (default: from the provider's headers)")


class RetriesConfig(Strict):
    max_attempts: int = Field(default=6, ge=1, description="attempts per call for 408/409/429/5xx, timeouts, drops")
    max_wait: float = Field(default=60.0, gt=0, description="cap in seconds on one backoff (Retry-After wins)")
    parse_attempts: int = Field(default=3, ge=1, description="fresh samples for an output that does not parse")


class TimeoutsConfig(Strict):
    initial: float = Field(default=120.0, gt=0, description="seconds, until enough latencies are observed")
    multiplier: float = Field(default=4.0, gt=1, description="timeout = multiplier x p95 latency (per model and template)")
    min: float = Field(default=2.0, gt=0)
    max: float = Field(default=300.0, gt=0)


class BatchConfig(Strict):
    poll_s: float = Field(default=30.0, gt=0, description="seconds between batch status checks")
    flush_s: float = Field(default=2.0, gt=0, description="submit queued requests after this long with no new one")
    max_requests: int | None = Field(default=None, ge=1, description="rows per batch (default: the provider's limit)")
    max_resubmits: int = Field(default=3, ge=0, description="resubmissions of an errored or expired row")


class StagesConfig(Strict):
    questions: QuestionsConfig = Field(default_factory=QuestionsConfig)
    answer: AnswerConfig = Field(default_factory=AnswerConfig)
    critique_revise: CritiqueReviseConfig = Field(default_factory=CritiqueReviseConfig)
    judge: JudgeConfig | None = Field(default=None, description="rank answers with a judge (default: revision wins)")
    export: ExportConfig = Field(default_factory=ExportConfig)

    def sampling(self) -> list[Sampling]:
        """The stages that call a model."""
        return [s for s in (self.questions, self.answer, self.critique_revise, self.judge) if s is not None]


class PipelineConfig(Strict):
    name: str = "pipeline"
    description: str = ""
    constitution: str
    prompts_dir: str = Field(default=str(ROOT / "prompts"), description="folder of prompt templates")
    model: str = Field(default="local:smollm2", description="default model spec for every stage")
    seed: int = 0
    concurrency: int = Field(default=64, ge=1, description="requests in flight per model endpoint")
    limits: dict[str, LimitsConfig] = Field(default_factory=dict, description="rate limits per model spec")
    retries: RetriesConfig = Field(default_factory=RetriesConfig)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    prices: str | None = Field(default=None, description="price table YAML (default: prices.yaml in the repo)")
    cache_dir: str | None = Field(default=None, description="shared call cache folder that runs reuse")
    max_cost: float | None = Field(default=None, gt=0, description="USD; stop cleanly before spending more")
    watchdog_s: float = Field(default=60.0, gt=0, description="report what is in flight after this long with no progress")
    stages: StagesConfig = Field(default_factory=StagesConfig)

    _base_dir: Path = PrivateAttr(default=ROOT)  # set by load_config

    def path(self, value: str) -> Path:
        """Resolve a path from the config against the config file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self._base_dir / p).resolve()

    def model_for(self, stage: Sampling) -> str:
        return stage.model or self.model


def load_config(path: str | Path | None = None) -> PipelineConfig:
    path = Path(path) if path else DEFAULT_CONFIG
    cfg = load_yaml(path, PipelineConfig)
    cfg._base_dir = path.resolve().parent
    return cfg
