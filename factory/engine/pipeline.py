"""A pipeline, validated: config plus command-line overrides, the constitution, the templates and
the input, all checked before anything is created or loaded. It builds the models and the caller."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from factory.config import InputSource, LimitsConfig, PipelineConfig
from factory.constitution import Constitution, load_constitution
from factory.engine.caller import Caller
from factory.engine.calllog import CallLog
from factory.engine.endpoint import Endpoint
from factory.engine.limits import Lease
from factory.engine.prices import Budget, PriceTable, load_prices, require_prices
from factory.engine.ratelimit import RateLimiter
from factory.engine.rundir import command_line, git_commit, now, package_versions
from factory.engine.stats import Stats
from factory.errors import FactoryError
from factory.hygiene.clean import Cleaner
from factory.inputs import Prompts, read_prompts
from factory.judging import Scorer
from factory.models import Model, load_model
from factory.models.spec import ModelSpec
from factory.prompts import Template, load_template
from factory.records import Record
from factory.search import SearchBackend, load_search
from factory.stages import Stage, questions
from factory.stages.modes import build_modes, load_modes
from factory.stages.questions import QuestionsStage
from factory.stages.registry import active, check_rows


@dataclass
class Overrides:
    """Command-line flags that override the pipeline config."""

    prompts: Path | list[InputSource] | None = None  # --prompts: a path, or sources with their column mapping
    limit: int | None = None
    model: str | None = None
    concurrency: int | None = None
    seed: int | None = None
    rounds: int | None = None
    max_cost: float | None = None
    cache_dir: Path | None = None
    rpm: float | None = None
    tpm: float | None = None

    def apply(self, cfg: PipelineConfig) -> PipelineConfig:
        cfg = cfg.model_copy(deep=True)
        if self.model:  # one model for every stage
            cfg.model = self.model
            for stage in cfg.stages.sampling():
                stage.model = None
        for name in ("concurrency", "seed", "max_cost"):
            if getattr(self, name) is not None:
                setattr(cfg, name, getattr(self, name))
        if self.cache_dir is not None:
            cfg.cache_dir = str(self.cache_dir.resolve())
        if self.rounds is not None and cfg.stages.critique_revise is not None:
            cfg.stages.critique_revise.rounds = self.rounds
        if self.rpm is not None or self.tpm is not None:
            for spec in {cfg.model_for(s) for s in cfg.stages.sampling()}:
                old = cfg.limits.get(spec, LimitsConfig())
                cfg.limits[spec] = LimitsConfig(rpm=self.rpm or old.rpm, tpm=self.tpm or old.tpm)
        return cfg


def file_digest(path: Path) -> str:
    """sha256 of a file; of a folder (a dataset), of its files' relative paths and digests."""
    if path.is_dir():
        parts = [f"{f.relative_to(path)} {file_digest(f)}" for f in sorted(path.rglob("*")) if f.is_file()]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def prompt_sources(given: Path | list[InputSource] | None, cfg: PipelineConfig) -> list[InputSource]:
    """--prompts (a path, or sources) wins over the config's `inputs`; paths absolute (the config's resolve
    against its folder)."""
    if given is None:
        sources = cfg.inputs
    elif isinstance(given, Path):
        sources = [InputSource(path=str(given.resolve()))]  # a path given here is the caller's, not the config's
    else:
        sources = given
    return [s.model_copy(update={"path": str(cfg.path(s.path))}) for s in sources]


@dataclass
class Pipeline:
    cfg: PipelineConfig
    constitution_path: Path
    constitution: Constitution
    templates: dict[str, Template]
    seeds: list[Record]
    from_file: Prompts | None
    limit: int | None
    prices: PriceTable
    cleaner: Cleaner | None = None
    extras: dict[str, object] = field(default_factory=dict)  # per stage: what its entry loaded besides templates
    models: dict[str, Model] = field(default_factory=dict)
    search: SearchBackend | None = None

    @classmethod
    def prepare(cls, cfg: PipelineConfig, ov: Overrides, needs_seeds: bool = True) -> Pipeline:
        if ov.limit is not None and ov.limit < 1:
            raise FactoryError("--limit must be at least 1")
        cfg = ov.apply(cfg)
        st = cfg.stages
        cpath = cfg.path(cfg.constitution)
        constitution = load_constitution(cpath)
        pdir = cfg.path(cfg.prompts_dir)
        check_rows(st)
        templates = {"questions": load_template(pdir, st.questions.template, questions.VARIABLES)}
        modes = load_modes(pdir, st.questions, cfg.path)  # a missing template or topics file fails here
        templates |= {f"questions_{name}": template for name, (template, _) in modes.items()}
        extras: dict[str, object] = {"questions": modes}
        for entry, section in active(st):
            loaded = entry.load(pdir, section)
            templates |= loaded.templates
            if loaded.extra is not None:
                extras[entry.name] = loaded.extra
        sources = prompt_sources(ov.prompts, cfg)
        from_file = Prompts(sources, cfg.path, ov.limit) if sources else None
        seeds = []
        topics_only = not st.questions.seeds and not st.questions.generate and set(modes) == {"topics"}
        if from_file is None and needs_seeds and not topics_only:
            if not st.questions.seeds:
                raise FactoryError("the pipeline config lists no seed files (stages.questions.seeds); "
                                   "add some or pass --prompts FILE.jsonl")
            for path in st.questions.seeds:
                seeds += read_prompts(cfg.path(path), "seed")
        if from_file is None and needs_seeds:
            build_modes(st.questions, templates["questions"], modes, seeds)  # a mode without its seeds fails here
        prices = load_prices(cfg.path(cfg.prices) if cfg.prices else None)
        cleaner = Cleaner(st.export.clean, cfg.path)  # loads the evaluation sets: bad ones fail here
        pipe = cls(cfg, cpath, constitution, templates, seeds, from_file, ov.limit, prices, cleaner=cleaner,
                   extras=extras)
        if cfg.max_cost is not None:
            require_prices(prices, [ModelSpec.parse(s) for s in pipe.used_specs()],
                           "--max-cost")
        return pipe

    @property
    def specs(self) -> dict[str, str]:
        """The model spec of every configured stage, questions first."""
        st = self.cfg.stages
        return {"questions": self.cfg.model_for(st.questions),
                **{entry.name: self.cfg.model_for(section) for entry, section in active(st)}}

    @property
    def record_stages(self) -> list[str]:
        return [entry.name for entry, _ in active(self.cfg.stages)]

    @property
    def declines(self) -> list[str]:
        return self.extras.get("idk", [])

    @property
    def teachers(self) -> list[Scorer]:
        return self.extras.get("judge", [])

    @property
    def generating(self) -> bool:
        return self.from_file is None and self.cfg.stages.questions.total_generate > 0

    def record_specs(self) -> list[str]:
        """The models the record stages call: their own, then the judge teachers' anchor models."""
        judge = self.cfg.stages.judge
        anchors = [t.anchor.model for t in judge.all_teachers if t.anchor] if judge else []
        return list(dict.fromkeys([self.specs[s] for s in self.record_stages] + anchors))

    def used_specs(self) -> list[str]:
        """Every model the run calls."""
        return list(dict.fromkeys(([self.specs["questions"]] if self.generating else []) + self.record_specs()))

    def load_models(self) -> None:
        """Build every backend the run uses (a missing API key fails here, before any output), and
        the fact checker's search backend (a local index is built once, then loaded)."""
        for spec in self.used_specs():
            if spec not in self.models:
                self.models[spec] = load_model(spec)
        if (fc := self.cfg.stages.factcheck) is not None and self.search is None:
            s = fc.search
            self.search = load_search(s.backend, cache_dir=self.cfg.path(s.index_dir) if s.index_dir else None,
                                      collection=self.cfg.path(s.collection) if s.collection else None)

    def caller(self, log: CallLog, stats: Stats, budget: Budget, *, lease: Lease | None = None, **kwargs) -> Caller:
        """`lease`: this process is a Ray shard, one of several sharing each API endpoint, so its rate
        limits and in-flight slots are leased from the cluster's (factory/engine/limits.py). An
        in-process (local) model is this process's own and keeps its own limits."""
        cfg = self.cfg
        endpoints = {}
        for spec, model in self.models.items():
            limits = cfg.limits.get(spec, LimitsConfig())
            shared = lease is not None and spec in lease.limiters
            limiter = lease.limiters[spec] if shared else RateLimiter(limits.rpm, limits.tpm)
            endpoints[spec] = Endpoint(model, cfg.concurrency, limiter, cfg.retries, cfg.timeouts, self.prices, budget,
                                       cfg.outage)
        return Caller(endpoints, log, stats, parse_attempts=cfg.retries.parse_attempts,
                      search_attempts=cfg.retries.max_attempts, max_wait=cfg.retries.max_wait,
                      outage=cfg.outage, **kwargs)

    def stages(self) -> list[Stage]:
        return [entry.build(self, section) for entry, section in active(self.cfg.stages)]

    def source(self) -> QuestionsStage:
        cfg = self.cfg
        q = cfg.stages.questions
        modes = build_modes(q, self.templates["questions"], self.extras.get("questions", {}), self.seeds)
        return QuestionsStage(q, self.templates["questions"], self.specs["questions"], cfg.seed, self.seeds,
                              self.from_file, self.limit, modes)

    async def aclose(self) -> None:
        for m in self.models.values():
            await m.aclose()
        if self.search is not None:
            await self.search.aclose()

    def prompts_digest(self) -> str | dict[str, str] | None:
        """The prompt sources' digests: one file's alone (as runs before several sources had), else per path."""
        if self.from_file is None:
            return None
        digests = {str(p): file_digest(p) for p in self.from_file.paths}
        return next(iter(digests.values())) if len(digests) == 1 else digests

    def inputs(self) -> dict:
        """Digests of every input that decides which records a run has and what they say."""
        return {
            "constitution": self.constitution.digest,
            "templates": {k: t.digest for k, t in self.templates.items()},
            "prompts_file": self.prompts_digest(),
            "seed_files": {p: file_digest(self.cfg.path(p)) for p in self.cfg.stages.questions.seeds}
            if self.seeds else {},
            **({"declines": hashlib.sha256("\n".join(self.declines).encode()).hexdigest()} if self.declines else {}),
        }

    def manifest(self, run_dir: Path, batch: bool) -> dict:
        return {
            "run_dir": str(run_dir),
            "status": "running",
            "started": now(),
            "command": command_line(),
            "config": self.cfg.model_dump(mode="json"),
            "config_dir": str(self.cfg.path(".")),
            "prompts": [s.model_dump(mode="json", exclude_unset=True) | {"path": str(p)} for s, p in
                        zip(self.from_file.sources, self.from_file.paths, strict=True)] if self.from_file else None,
            **({"mix": self.from_file.mix()} if self.from_file and len(self.from_file.sources) > 1 else {}),
            "limit": self.limit,
            "batch": batch,
            "constitution": {
                "path": str(self.constitution_path),
                "label": self.constitution.label,
                "sha256": self.constitution.digest,
                "principles": {p.id: p.digest() for p in self.constitution.principles},
            },
            "templates": {k: {"name": t.name, "path": str(t.path), "sha256": t.digest} for k, t in self.templates.items()},
            "inputs": self.inputs(),
            "models": sorted(set(self.specs.values()) | set(self.used_specs())),
            "stage_models": self.specs,
            "seed": self.cfg.seed,
            "packages": package_versions(),
            "git_commit": git_commit(),
        }
