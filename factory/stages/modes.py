"""Question-generation modes: what one generation call of each mode shows the model.

`few_shot` (QuestionsConfig.generate, template `questions`): examples from every seed file, records of
kind `generated`. `red_team`: examples from red_team seeds only, one harm area per call. `helpful`:
examples from helpful seeds only (self-instruct). `topics`: one topic or persona per call, no seeds.
`evol`: one seed prompt per call, rewritten (harder, more specific, with a constraint or a context).
Each mode's records carry its name as their `kind` (few_shot: `generated`, as before modes existed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from factory.config import EvolMode, ModeConfig, QuestionsConfig, RedTeamMode, TopicsMode
from factory.engine.caller import derive_seed, rng
from factory.errors import FactoryError
from factory.prompts import Template, load_template
from factory.records import Record
from factory.yamlfile import read_text

VARIABLES = {"few_shot": {"examples", "n"}, "red_team": {"examples", "n", "harm_area"},
             "helpful": {"examples", "n"}, "topics": {"topic", "n"}, "evol": {"prompt", "how", "n"}}
SEED_KIND = {"red_team": "red_team", "helpful": "helpful"}  # the seeds a few-shot mode draws from


@dataclass
class Mode:
    name: str
    template: Template
    generate: int
    pool: list[Record] = field(default_factory=list)  # seed prompts shown or rewritten
    items: list[str] = field(default_factory=list)  # harm areas, topics or rewrites: one per call, in turn
    examples: int = 4

    @property
    def kind(self) -> str:
        return "generated" if self.name == "few_shot" else self.name

    def purpose(self, i: int) -> str:
        return f"generate[{i}]" if self.name == "few_shot" else f"generate.{self.name}[{i}]"

    def call_seed(self, seed: int, i: int) -> int:
        return derive_seed(seed, "questions", i) if self.name == "few_shot" else derive_seed(seed, "questions",
                                                                                              self.name, i)

    def plan(self, seed: int, i: int, n: int) -> tuple[dict, dict, list[Record]]:
        """(template variables, metadata of its records, the seed records it used) for call i."""
        r = rng(seed, "questions", i) if self.name == "few_shot" else rng(seed, "questions", self.name, i)
        item = self.items[i % len(self.items)] if self.items else None
        if self.name == "evol":
            parent = r.choice(self.pool)
            return {"prompt": parent.prompt, "how": item, "n": n}, {"how": item}, [parent]
        if self.name == "topics":
            return {"topic": item, "n": n}, {"topic": item}, []
        shown = r.sample(self.pool, min(self.examples, len(self.pool)))
        variables = {"examples": [x.prompt for x in shown], "n": n}
        if self.name == "red_team":
            return variables | {"harm_area": item}, {"harm_area": item}, shown
        return variables, {}, shown


def load_modes(prompts_dir: Path, cfg: QuestionsConfig, resolve) -> dict[str, tuple[Template, list[str]]]:
    """Each active mode's template and items (the topics file read and checked here, before any call)."""
    out = {}
    for name, m in cfg.modes.active():
        template = load_template(prompts_dir, m.template or f"questions_{name}", VARIABLES[name])
        out[name] = (template, items(name, m, resolve))
    return out


def items(name: str, m: ModeConfig, resolve) -> list[str]:
    if isinstance(m, RedTeamMode):
        return m.harm_areas
    if isinstance(m, EvolMode):
        return list(m.how)
    if isinstance(m, TopicsMode):
        topics = list(m.topics)
        if m.topics_file:
            path = resolve(m.topics_file)
            topics += [t.strip() for t in read_text(path).splitlines() if t.strip() and not t.lstrip().startswith("#")]
        if not topics:
            raise FactoryError("stages.questions.modes.topics needs `topics` or a `topics_file` with at least one line")
        return topics
    return []


def few_shot_mode(cfg: QuestionsConfig, template: Template, seeds: list[Record]) -> list[Mode]:
    """The few-shot `generate` (every seed file's prompts as examples), if it asks for any prompt."""
    return [Mode("few_shot", template, cfg.generate, seeds, examples=cfg.examples_per_call)] if cfg.generate else []


def build_modes(cfg: QuestionsConfig, few_shot: Template, loaded: dict[str, tuple[Template, list[str]]],
                seeds: list[Record]) -> list[Mode]:
    """The modes in the order they run: few-shot `generate` first, then red_team, helpful, topics, evol.
    A mode that needs seeds of its kind and has none fails here, before any call."""
    modes = few_shot_mode(cfg, few_shot, seeds)
    for name, m in cfg.modes.active():
        template, its = loaded[name]
        pool = seeds
        if name in SEED_KIND:
            pool = [s for s in seeds if s.metadata.get("kind") == SEED_KIND[name]]
        elif isinstance(m, EvolMode) and m.from_kinds is not None:
            pool = [s for s in seeds if s.metadata.get("kind") in m.from_kinds]
        elif name == "topics":
            pool = []
        if name != "topics" and not pool:
            want = SEED_KIND.get(name) or (", ".join(m.from_kinds) if isinstance(m, EvolMode) and m.from_kinds else "any")
            raise FactoryError(f"stages.questions.modes.{name}: generation mode {name} needs seed prompts of kind "
                               f"{want}; the seed files (stages.questions.seeds) have none")
        modes.append(Mode(name, template, m.generate, pool, its, cfg.examples_per_call))
    return modes
