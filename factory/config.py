"""Pipeline config: a YAML file naming the constitution, the models and each stage's parameters.

Relative paths in a config resolve against the config file's folder. A config may start from another
in the same folder (`extends: NAME.yaml`): its keys on top of that one's, mappings merged key by key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from factory.hygiene.filters import QualityConfig
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


class InputSource(Strict):
    """One source of prompts: a JSONL file, a Parquet file, or a Hugging Face dataset (a folder saved
    with `save_to_disk`, or one `load_dataset` reads: Parquet/JSONL files, a hub-style folder). A row
    holds a `prompt` string, a `messages` list (OpenAI chat format, optional system turn first, the
    user's turn last) or a text in the Human/Assistant layout; the columns are named here."""

    path: str
    format: Literal["auto", "jsonl", "parquet", "dataset"] = Field(
        default="auto", description="auto: .jsonl/.json -> jsonl, .parquet -> parquet, a folder -> dataset")
    split: str | None = Field(default=None, description="dataset split (default: train, or the only one)")
    subset: str | None = Field(default=None, description="dataset config name, where it has several")
    prompt_column: str = Field(default="prompt", description="a plain user prompt")
    messages_column: str = Field(default="messages", description="a list of {role, content} turns")
    text_column: str | None = Field(default=None, description="a text in the \\n\\nHuman: ... \\n\\nAssistant: "
                                    "layout (used instead of prompt and messages)")
    system_column: str = Field(default="system", description="a system prompt, where the row has one")
    kind: str | None = Field(default=None, description="`kind` of the rows that carry none (e.g. red_team, helpful)")
    weight: float | None = Field(default=None, gt=0, description="mixing ratio against the other sources "
                                 "(all sources or none)")


class ModeConfig(Strict):
    """One question-generation mode: how many prompts it writes, with which template. Its records get the
    mode's name as their `kind`."""

    generate: int = Field(ge=1, description="how many new prompts this mode writes")
    template: str | None = Field(default=None, description="template name (default: questions_<mode>)")


class RedTeamMode(ModeConfig):
    harm_areas: list[str] = Field(default_factory=lambda: ["privacy", "violence", "fraud and scams", "harassment",
                                                           "weapons", "illegal drugs", "hacking", "self-harm"],
                                  min_length=1, description="one per call, in turn; examples are red_team seeds only")


class TopicsMode(ModeConfig):
    topics: list[str] = Field(default_factory=list, description="topics or personas, one per call in turn")
    topics_file: str | None = Field(default=None, description="or a text file, one per line (# starts a comment)")


class EvolMode(ModeConfig):
    how: list[Literal["harder", "specific", "constraints", "context"]] = Field(
        default_factory=lambda: ["harder", "specific", "constraints", "context"], min_length=1,
        description="rewrites, one per call in turn (the template words each one)")
    from_kinds: list[str] | None = Field(default=None, description="rewrite seed prompts of these kinds (default: all)")


class GenerationModes(Strict):
    """Question generation with distinct modes, each its own template (prompts/questions_<mode>.yaml)."""

    red_team: RedTeamMode | None = Field(default=None, description="attacks per harm area, few-shot from red_team seeds")
    helpful: ModeConfig | None = Field(default=None, description="self-instruct from helpful seeds")
    topics: TopicsMode | None = Field(default=None, description="from topics or personas; no seeds needed")
    evol: EvolMode | None = Field(default=None, description="an existing prompt rewritten harder or more specific")

    def active(self) -> list[tuple[str, ModeConfig]]:
        return [(name, m) for name in ("red_team", "helpful", "topics", "evol") if (m := getattr(self, name)) is not None]


class QuestionsConfig(Sampling):
    seeds: list[str] = Field(default_factory=list, description="JSONL seed prompt files")
    include_seeds: bool = Field(default=True, description="the seed prompts themselves are records too")
    max_seeds: int | None = Field(default=None, ge=0, description="use a seeded sample of this many seed prompts")
    generate: int = Field(default=0, ge=0, description="how many new prompts to generate from the seeds")
    examples_per_call: int = Field(default=4, ge=1, description="seed prompts shown per generation call")
    questions_per_call: int = Field(default=5, ge=1, description="new prompts asked for per call")
    max_calls: int | None = Field(default=None, ge=1, description="cap on generation calls (default 3x what the expected_keep yield needs)")
    expected_keep: float = Field(default=1.0, gt=0, le=1, description="share of asked-for prompts expected to pass "
                                 "the gates and dedup: sizes the first wave of generation calls (later waves use "
                                 "the share kept so far)")
    template: str = "questions"
    temperature: float = Field(default=1.0, ge=0, le=2)
    gate_incoherent: bool = Field(default=True, description="drop generated prompts that are not a request a user "
                                  "could send (cut off, no question or request form, non-words)")
    modes: GenerationModes = Field(default_factory=GenerationModes, description="generation modes, after `generate`")
    near_dedup: float | None = Field(default=0.8, gt=0, le=1, description="drop a generated prompt this similar "
                                     "(MinHash Jaccard of word 3-grams) to a seed or an earlier prompt; null: off")

    @property
    def total_generate(self) -> int:
        """Prompts to generate: the few-shot `generate` plus every mode's."""
        return self.generate + sum(m.generate for _, m in self.modes.active())


class AnswerConfig(Sampling):
    candidates: int = Field(default=1, ge=1, le=16)
    template: str = "answer"


class CritiqueReviseConfig(Sampling):
    rounds: int = Field(default=1, ge=1, le=4)
    few_shot: int = Field(default=2, ge=0, description="constitution examples shown per call")
    critique_template: str = "critique"
    revision_template: str = "revision"
    gate_critique: bool = Field(default=True, description="set aside revisions that read as a critique of the answer")
    gate_off_topic: bool = Field(default=True, description="set aside revisions less related to the prompt than the answer")


class AnchorConfig(Strict):
    """A reference model whose answers to the same prompt set the level a teacher holds."""

    model: str = Field(description="the reference model's spec (in a loop: the base model, e.g. local:smollm2)")
    samples: int = Field(default=4, ge=1, le=16, description="its answers per prompt (the answer stage's template "
                         "and sampling), whose mean score is the level")
    side: Literal["both", "below"] = Field(default="both", description="both: minus the distance from the level "
                                           "either way; below: only a score under the level costs (the rest tie)")

    def held(self, score: float, level: float) -> float:
        """SCORE as held at LEVEL: 0 at the level, less the further it strays (on the counted side)."""
        return -abs(score - level) if self.side == "both" else -max(0.0, level - score)


class TeacherConfig(Strict):
    scorer: str = Field(description="vader:positive, vader:negative, vader:near:T, refusal:refuses, "
                        "refusal:complies or hf:PATH:LABEL")
    anchor: AnchorConfig | None = Field(
        default=None, description="score each answer by minus its distance from the mean score of a reference "
        "model's answers to the same prompt: holds each prompt's own level (a tone) instead of pushing it")
    mentions: list[str] = Field(default_factory=list, description="apply only to answers naming one of these")
    regex: str | None = Field(default=None, description="or matching this regular expression")
    where: Literal["answer", "prompt"] = Field(
        default="answer", description="what `mentions` and `regex` are tested on: each answer, or the prompt "
        "(then the teacher scores every answer to a prompt that matches)")
    scale: float = Field(default=5.0, gt=0, description="P(i better) = sigmoid(scale x (score_i - score_j))")
    max_pairs: int | None = Field(default=None, ge=1, description="for the prompts this teacher ranks, instead of "
                                  "the judge's `max_pairs`")


class JudgeConfig(Sampling):
    """The judge: compares answers under principles drawn from the constitution's `judge` texts."""

    compare: Literal["initial", "final", "both"] = Field(
        default="both", description="which texts of each candidate are options: first answers, revisions, or both")
    method: Literal["choice", "cot", "score"] = Field(
        default="choice", description="(A)/(B) choice, chain of thought (clamped to [0.4, 0.6]), or a 1-10 score")
    principles: int = Field(default=1, ge=1, le=8, description="principles drawn per comparison (an ensemble)")
    samples: int = Field(default=1, ge=1, le=16, description="verdicts sampled where the backend gives no logprobs")
    pairs: Literal["best_worst", "all_pairs"] = "best_worst"
    max_pairs: int | None = Field(default=None, ge=1, description="all_pairs: keep each prompt's N widest pairs "
                                  "(6 answers make 15 pairs, most of them narrow)")
    ranking: Literal["bradley_terry", "wins"] = "bradley_terry"
    demote_failing: bool = Field(default=True, description="an option that fails the export's quality filters "
                                 "(stages.export.clean.quality: a word loop, a symbol wall...) loses every comparison "
                                 "with one that passes, without a judge call: never chosen, never the SFT row")
    teacher: TeacherConfig | None = Field(default=None, description="a classifier that ranks the answers it applies to")
    teachers: list[TeacherConfig] = Field(
        default_factory=list, description="instead of `teacher`, several: for each prompt the first whose rule "
        "matches ranks its answers; one with no `mentions` or `regex` takes the prompts left")
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_tokens: int = Field(default=8, ge=1, description="choice and score need a few tokens; cot needs hundreds")
    template: str = "judge"
    cot_template: str = "judge_cot"
    score_template: str = "judge_score"

    @property
    def all_teachers(self) -> list[TeacherConfig]:
        return [self.teacher] if self.teacher is not None else list(self.teachers)

    def without_teachers(self, **update: object) -> JudgeConfig:
        """These settings for the model judge alone (every pair to the model), with `update`, checked again."""
        return JudgeConfig.model_validate(self.model_dump(exclude={"teacher", "teachers"}) | update)

    @model_validator(mode="after")
    def _check(self) -> JudgeConfig:
        if self.teacher is not None and self.teachers:
            raise ValueError("set `teacher` or `teachers`, not both")
        if self.samples > 1 and self.temperature == 0:
            raise ValueError("samples > 1 needs temperature > 0 (greedy verdicts are all the same)")
        if self.method == "cot" and self.max_tokens < 64:
            raise ValueError("method 'cot' needs max_tokens of at least 64 for the reasoning")
        if self.pairs != "all_pairs" and any(c.max_pairs for c in [self, *self.all_teachers]):
            raise ValueError("max_pairs needs pairs: all_pairs (best_worst gives one pair per prompt)")
        return self


class SearchConfig(Strict):
    backend: Literal["local", "tavily", "brave", "wikipedia", "searxng"] = Field(
        default="local", description="local BM25 (offline) or a web backend (its key or URL from the env)")
    collection: str | None = Field(default=None, description="local only: JSONL, Parquet or a folder of "
                                   ".txt/.md (default: the 10,033 Wikipedia summaries)")
    index_dir: str | None = Field(default=None, description="where local indexes are built once and kept "
                                  "(default: $FACTORY_CACHE_DIR/search)")
    k: int = Field(default=3, ge=1, le=20, description="passages retrieved per query")


class FactCheckConfig(Sampling):
    """SAFE-style fact checking: claims, search queries per claim, retrieval, a verdict per claim."""

    target: Literal["final", "initial", "both"] = Field(
        default="final", description="which texts of each candidate to check: revisions, first answers, or both")
    max_claims: int = Field(default=8, ge=1, le=50, description="claims kept per answer (the first ones)")
    queries: int = Field(default=3, ge=1, le=8, description="search queries per claim (Q)")
    claim_as_query: bool = Field(default=True, description="the claim itself is the first query; the model "
                                 "writes the other Q-1 (none with queries: 1)")
    passage_chars: int = Field(default=800, ge=100, description="characters of each passage shown and kept")
    f1_k: int = Field(default=5, ge=1, description="K of F1@K: recall = min(1, supported / K)")
    metric: Literal["f1", "precision"] = Field(default="f1", description="the score drop_below and prefer use")
    drop_below: float | None = Field(default=None, ge=0, le=1, description="drop answers scoring below this "
                                     "(the record when none is left)")
    revise: bool = Field(default=False, description="one more revision round on unsupported claims and evidence")
    recheck: bool = Field(default=False, description="check the fact-revised text again (drop_below and prefer use it)")
    prefer: bool = Field(default=False, description="pairs: the best-supported text chosen over the worst")
    search: SearchConfig = Field(default_factory=SearchConfig)
    temperature: float = Field(default=0.0, ge=0, le=2)
    claims_template: str = "claims"
    queries_template: str = "claim_queries"
    verdict_template: str = "claim_verdict"
    revision_template: str = "fact_revision"

    @model_validator(mode="after")
    def _check(self) -> FactCheckConfig:
        if self.revise and self.target == "initial":
            raise ValueError("revise needs target 'final' or 'both': it revises each candidate's final text")
        if self.recheck and not self.revise:
            raise ValueError("recheck checks the fact-revised text: set revise: true as well")
        return self


class IdkConfig(Sampling):
    """"I don't know" labels: each sampled answer judged against the prompt's reference answers."""

    match: Literal["normalised", "judge"] = Field(
        default="normalised", description="normalised containment (SQuAD-style), or the model with the references")
    answers_field: str = Field(default="answers", description="the prompts file field holding the references")
    wrong_field: str = Field(default="wrong_answers", description="the prompts file field holding known wrong "
                             "answers of the same kind (optional): an answer naming one is wrong")
    pairs: Literal["each", "one"] = Field(default="each", description="the target over each wrong answer, or one")
    decline_max_correct: int = Field(default=0, ge=0, description="the target is a decline when at most this many of "
                                     "the K samples were right (0: only when none was)")
    declines: str = Field(default="idk_declines", description="YAML file in prompts_dir with `declines:` phrasings")
    template: str = "idk_judge"
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_tokens: int = Field(default=8, ge=1)


class EvalSet(Strict):
    path: str = Field(description="JSONL, Parquet or text file of evaluation examples")
    fields: list[str] = Field(default_factory=lambda: ["text"], min_length=1, description="text fields to check against")


class CleanConfig(Strict):
    """Filters, dedup and decontamination before export; every drop is a counted reason."""

    exact_dedup: bool = Field(default=True, description="drop records whose prompt or SFT text repeats (normalised)")
    near_dedup: bool = Field(default=True, description="MinHash LSH near-dedup of prompts and SFT texts")
    threshold: float = Field(default=0.8, gt=0, le=1, description="Jaccard similarity that counts as a duplicate")
    ngram: int = Field(default=5, ge=1, description="word shingle size for near-dedup")
    decontaminate: list[EvalSet] = Field(default_factory=list, description="evaluation sets to keep out of the data")
    decontam_ngram: int = Field(default=13, ge=1)
    drop_truncated: bool = Field(default=True, description="drop SFT texts whose call stopped at max_tokens")
    drop_critique_repeats: bool = Field(default=True, description="drop SFT texts that only repeat a critique")
    drop_over_refusal: bool = Field(default=True, description="drop refusals to prompts of a benign kind")
    benign_kinds: list[str] = Field(default_factory=lambda: ["helpful"],
                                    description="prompt `kind` values (from the prompt files) that deserve an answer")
    quality: QualityConfig = Field(default_factory=QualityConfig)


class ExportConfig(Strict):
    test_fraction: float = Field(default=0.1, ge=0, le=1)
    license: str = Field(default="other", description="license field of the dataset card")
    min_margin: float = Field(default=0.0, ge=0, le=1, description="judged pairs: drop those with 2p-1 below this")
    consistent_only: bool = Field(default=False, description="judged pairs: keep only position-consistent ones")
    gate_judge_reversed: bool = Field(default=True, description="judged pairs: drop a pair whose direct comparison "
                                      "preferred the rejected text in both orders")
    kto: bool = Field(default=False, description="also write a `kto` config: prompt, completion, label")
    reward: bool = Field(default=False, description="also write a `reward` config: implicit prompts and a margin")
    jsonl: bool = Field(default=False, description="also write each split as JSONL next to its Parquet file")
    clean: CleanConfig = Field(default_factory=CleanConfig)


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


class OutageConfig(Strict):
    """An endpoint that stops answering pauses the calls to it (see factory.engine.outage)."""

    after_failures: int = Field(default=3, ge=1, description="attempts in a row with no answer at all that mean "
                                "the endpoint is down")
    max_probe_s: float = Field(default=30.0, gt=0, description="cap in seconds on the backoff between probes")
    max_down_s: float = Field(default=900.0, gt=0, description="stop the run (resumable, exit 4) after the endpoint "
                              "has been down this long")


class BatchConfig(Strict):
    poll_s: float = Field(default=30.0, gt=0, description="seconds between batch status checks")
    flush_s: float = Field(default=2.0, gt=0, description="submit queued requests after this long with no new one")
    max_requests: int | None = Field(default=None, ge=1, description="rows per batch (default: the provider's limit)")
    max_resubmits: int = Field(default=3, ge=0, description="resubmissions of an errored or expired row")


class StagesConfig(Strict):
    questions: QuestionsConfig = Field(default_factory=QuestionsConfig)
    answer: AnswerConfig = Field(default_factory=AnswerConfig)
    critique_revise: CritiqueReviseConfig | None = Field(default_factory=CritiqueReviseConfig,
                                                         description="null skips critique and revision")
    idk: IdkConfig | None = Field(default=None, description="label answers against reference answers")
    factcheck: FactCheckConfig | None = Field(default=None, description="check answers' claims via search")
    judge: JudgeConfig | None = Field(default=None, description="rank answers with a judge (default: revision wins)")
    export: ExportConfig = Field(default_factory=ExportConfig)

    def sampling(self) -> list[Sampling]:
        """The stages that call a model."""
        return [s for s in (self.questions, self.answer, self.critique_revise, self.idk, self.factcheck, self.judge)
                if s is not None]


class PipelineConfig(Strict):
    name: str = "pipeline"
    description: str = ""
    constitution: str
    prompts_dir: str = Field(default=str(ROOT / "prompts"), description="folder of prompt templates")
    model: str = Field(default="local:smollm2", description="default model spec for every stage")
    seed: int = 0
    inputs: list[InputSource] = Field(default_factory=list, description="prompt sources (instead of question "
                                      "generation); --prompts on the command line replaces them")
    concurrency: int = Field(default=64, ge=1, description="requests in flight per model endpoint")
    limits: dict[str, LimitsConfig] = Field(default_factory=dict, description="rate limits per model spec")
    retries: RetriesConfig = Field(default_factory=RetriesConfig)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    outage: OutageConfig = Field(default_factory=OutageConfig)
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

    def based_at(self, folder: Path) -> PipelineConfig:
        """This config, its relative paths resolved against `folder` (where it was loaded from)."""
        self._base_dir = Path(folder)
        return self

    def model_for(self, stage: Sampling) -> str:
        return stage.model or self.model


def load_config(path: str | Path | None = None) -> PipelineConfig:
    path = Path(path) if path else DEFAULT_CONFIG
    return load_yaml(path, PipelineConfig, extends=True).based_at(path.resolve().parent)
