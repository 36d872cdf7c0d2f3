"""The runner: validates every input, then owns the run directory, the models, concurrency, the
call log, lineage, failures and stats. Stages never touch any of these."""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from factory.caller import Caller
from factory.calllog import CallLog
from factory.card import card_body
from factory.config import PipelineConfig
from factory.constitution import Constitution, load_constitution
from factory.errors import FactoryError, ModelCallError
from factory.inputs import read_prompts
from factory.models import Model, load_model
from factory.progress import Display, summary_table
from factory.prompts import Template, load_template
from factory.records import Record
from factory.rundir import command_line, create_run_dir, git_commit, now, package_versions, write_json
from factory.stages import Stage, answer, critique_revise, questions
from factory.stages.answer import AnswerStage
from factory.stages.critique_revise import CritiqueReviseStage
from factory.stages.export import export
from factory.stages.questions import QuestionsStage
from factory.stats import Stats

STAGES = ["questions", "answer", "critique_revise", "export"]


@dataclass
class Overrides:
    """Command-line flags that override the pipeline config."""

    prompts: Path | None = None
    limit: int | None = None
    model: str | None = None
    concurrency: int | None = None
    seed: int | None = None
    rounds: int | None = None

    def apply(self, cfg: PipelineConfig) -> PipelineConfig:
        cfg = cfg.model_copy(deep=True)
        if self.model:  # one model for every stage
            cfg.model = self.model
            for stage in (cfg.stages.questions, cfg.stages.answer, cfg.stages.critique_revise):
                stage.model = None
        if self.concurrency is not None:
            cfg.concurrency = self.concurrency
        if self.seed is not None:
            cfg.seed = self.seed
        if self.rounds is not None:
            cfg.stages.critique_revise.rounds = self.rounds
        return cfg


@dataclass
class Pipeline:
    """Everything a run needs, validated, before anything is created or loaded."""

    cfg: PipelineConfig
    constitution_path: Path
    constitution: Constitution
    templates: dict[str, Template]
    seeds: list[Record]
    from_file: list[Record] | None
    limit: int | None
    prompts_path: Path | None = None
    models: dict[str, Model] = field(default_factory=dict)

    @classmethod
    def prepare(cls, cfg: PipelineConfig, ov: Overrides, needs_seeds: bool = True) -> Pipeline:
        if ov.limit is not None and ov.limit < 1:
            raise FactoryError("--limit must be at least 1")
        cfg = ov.apply(cfg)
        st = cfg.stages
        cpath = cfg.path(cfg.constitution)
        constitution = load_constitution(cpath)
        pdir = cfg.path(cfg.prompts_dir)
        templates = {
            "questions": load_template(pdir, st.questions.template, questions.VARIABLES),
            "answer": load_template(pdir, st.answer.template, answer.VARIABLES),
            "critique": load_template(pdir, st.critique_revise.critique_template, critique_revise.CRITIQUE_VARIABLES),
            "revision": load_template(pdir, st.critique_revise.revision_template, critique_revise.REVISION_VARIABLES),
        }
        from_file = read_prompts(ov.prompts, "file", ov.limit) if ov.prompts else None
        seeds = []
        if from_file is None and needs_seeds:
            if not st.questions.seeds:
                raise FactoryError("the pipeline config lists no seed files (stages.questions.seeds); "
                                   "add some or pass --prompts FILE.jsonl")
            for path in st.questions.seeds:
                seeds += read_prompts(cfg.path(path), "seed")
        return cls(cfg, cpath, constitution, templates, seeds, from_file, ov.limit, ov.prompts)

    @property
    def specs(self) -> dict[str, str]:
        st = self.cfg.stages
        return {
            "questions": self.cfg.model_for(st.questions),
            "answer": self.cfg.model_for(st.answer),
            "critique_revise": self.cfg.model_for(st.critique_revise),
        }

    def load_models(self) -> None:
        """Build every backend the run uses (a missing API key fails here, before any output)."""
        generating = self.from_file is None and self.cfg.stages.questions.generate > 0
        for stage in (["questions"] if generating else []) + ["answer", "critique_revise"]:
            spec = self.specs[stage]
            if spec not in self.models:
                self.models[spec] = load_model(spec)

    def stages(self) -> list[Stage]:
        cfg, t, seed = self.cfg, self.templates, self.cfg.seed
        return [
            AnswerStage(cfg.stages.answer, t["answer"], self.specs["answer"], seed),
            CritiqueReviseStage(cfg.stages.critique_revise, self.constitution, t["critique"], t["revision"],
                                self.specs["critique_revise"], seed),
        ]

    def source(self) -> QuestionsStage:
        cfg = self.cfg
        return QuestionsStage(cfg.stages.questions, self.templates["questions"], self.specs["questions"],
                              cfg.seed, self.seeds, self.from_file, self.limit)

    async def aclose(self) -> None:
        for m in self.models.values():
            await m.aclose()

    def manifest(self, run_dir: Path) -> dict:
        return {
            "run_dir": str(run_dir),
            "status": "running",
            "started": now(),
            "command": command_line(),
            "config": self.cfg.model_dump(mode="json"),
            "constitution": {
                "path": str(self.constitution_path),
                "label": self.constitution.label,
                "sha256": self.constitution.digest,
                "principles": {p.id: p.digest() for p in self.constitution.principles},
            },
            "templates": {k: {"name": t.name, "path": str(t.path), "sha256": t.digest} for k, t in self.templates.items()},
            "prompts_file": {"path": str(self.prompts_path), "sha256": file_digest(self.prompts_path)}
            if self.prompts_path else None,
            "seed_files": {p: file_digest(self.cfg.path(p)) for p in self.cfg.stages.questions.seeds}
            if self.seeds else {},
            "models": sorted(set(self.specs.values())),
            "stage_models": self.specs,
            "seed": self.cfg.seed,
            "limit": self.limit,
            "packages": package_versions(),
            "git_commit": git_commit(),
        }


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Run:
    """One run in its directory: records.jsonl (lineage), failed.jsonl, calls.sqlite, stats.json."""

    def __init__(self, pipe: Pipeline, run_dir: Path, console: Console):
        self.pipe, self.dir, self.console = pipe, run_dir, console
        self.stats = Stats(STAGES)
        self.log = CallLog(run_dir / "calls.sqlite")
        self.caller = Caller(pipe.models, pipe.cfg.concurrency, self.log, self.stats)
        self.failed = 0

    async def execute(self) -> list[Record]:
        stages = self.pipe.stages()
        done: list[Record] = []
        with (self.dir / "records.jsonl").open("w") as lineage, (self.dir / "failed.jsonl").open("w") as failed, \
                Display(self.stats, self.console) as display:
            display.stage("questions", None)
            records = await self.pipe.source().produce(self.caller)
            display.finish("questions", len(records))
            for s in stages:
                display.stage(s.name, len(records))

            def close_bars(from_stage: int) -> None:  # a record that leaves early still fills every bar
                for later in stages[from_stage:]:
                    display.advance(later.name)

            async def one(rec: Record) -> None:
                for i, s in enumerate(stages):
                    st = self.stats[s.name]
                    st.records_in += 1
                    try:
                        await s.process(rec, self.caller)
                    except ModelCallError as e:
                        if e.fatal:
                            raise FactoryError(f"{e}\nthe run stopped: every further call would fail the same way. "
                                               "Fix the key, model name or base URL and run again.") from None
                        st.drop("failed")
                        self.failed += 1
                        failed.write(json.dumps({"stage": s.name, "reason": str(e), "record": rec.model_dump()}) + "\n")
                        failed.flush()
                        close_bars(i)
                        return
                    if rec.dropped:
                        st.drop(rec.dropped.reason)
                        close_bars(i)
                        break
                    st.records_out += 1
                    display.advance(s.name)
                lineage.write(rec.model_dump_json() + "\n")
                lineage.flush()
                if not rec.dropped:
                    done.append(rec)

            await asyncio.gather(*(one(r) for r in records))
        return done

    def finish(self, done: list[Record], manifest: dict) -> dict:
        pipe = self.pipe
        generator = pipe.specs["answer"]

        def card(counts: dict, example: dict | None) -> str:
            return card_body(self.dir.name, manifest, pipe.constitution, counts, self.stats.to_dict(), example)

        counts = export(done, self.dir, pipe.cfg.stages.export, pipe.constitution, generator, self.stats["export"], card)
        self.log.close()
        stats = self.stats.to_dict() | {"datasets": counts, "failed_records": self.failed}
        write_json(self.dir / "stats.json", stats)
        manifest.update(status="complete" if not self.failed else "complete_with_failures", finished=now(),
                        datasets=counts)
        write_json(self.dir / "manifest.json", manifest)
        return counts


def run(pipe: Pipeline, out: Path | None, console: Console) -> tuple[Path, int, dict]:
    """Load models, create the run directory, run every stage, export. Returns (dir, failed, counts)."""
    pipe.load_models()
    run_dir = create_run_dir(out)
    manifest = pipe.manifest(run_dir)
    write_json(run_dir / "manifest.json", manifest)
    r = Run(pipe, run_dir, console)

    async def main() -> list[Record]:
        try:
            return await r.execute()
        finally:
            await pipe.aclose()

    try:
        done = asyncio.run(main())
    except FactoryError as e:
        write_json(run_dir / "manifest.json", manifest | {"status": "aborted", "error": str(e), "finished": now()})
        raise
    counts = r.finish(done, manifest)
    console.print(summary_table(r.stats))
    return run_dir, r.failed, counts
