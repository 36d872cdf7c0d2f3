"""QA items drawn from corpus passages by fixed patterns (`--generator rules`): the QA mode's writer
when no model can write questions. The embedded 135M model kept 0 of 300 written items (it seldom
writes the Question/Answer form, and its answers are seldom in the passage), so `make idk-demo`
could not run on the default install. The patterns and question templates live in
prompts/qa_rules.yaml; here they are only loaded and applied."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from factory.yamlfile import load_yaml

RULES_FILE = "qa_rules"
_TITLE_NOTE = re.compile(r"\s*\([^)]*\)\s*$")


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    pattern: re.Pattern
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1, description="the named group that holds the reference answer")
    aliases: dict[str, list[str]] | None = None

    @field_validator("pattern", mode="before")
    @classmethod
    def _compile(cls, v: object) -> re.Pattern:
        if not isinstance(v, str):
            raise ValueError("a regular expression (a string)")
        try:
            return re.compile(v)
        except re.error as e:
            raise ValueError(f"not a valid regular expression: {e}") from None

    @model_validator(mode="after")
    def _groups(self) -> Rule:
        groups = set(self.pattern.groupindex)
        if self.answer not in groups:
            raise ValueError(f"answer: '{self.answer}' is not a named group of the pattern ({sorted(groups)})")
        asked = set(re.findall(r"{(\w+)}", self.question)) - {"title"}
        if not asked <= groups:
            raise ValueError(f"question: {sorted(asked - groups)} not named groups of the pattern")
        return self

    def apply(self, title: str, text: str) -> tuple[str, list[str]] | None:
        """(question, reference answers) from a passage, or None when the rule does not fit it."""
        m = self.pattern.match(text.strip())
        if m is None:
            return None
        groups = {k: v.strip() for k, v in m.groupdict().items() if v and v.strip()}
        value = groups.get(self.answer)
        if value is None or (self.aliases is not None and value not in self.aliases):
            return None
        try:  # an optional group the passage left empty: the rule does not fit it
            question = self.question.format(title=_TITLE_NOTE.sub("", title).strip(), **groups)
        except KeyError:
            return None
        answers = [value, *(self.aliases or {}).get(value, [])]
        if value.lower() in question.lower():
            return None  # the question would give its answer away
        return question, answers


class RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = ""
    rules: list[Rule] = Field(min_length=1)


def load_rules(prompts_dir: Path) -> list[Rule]:
    return load_yaml(prompts_dir / f"{RULES_FILE}.yaml", RulesFile).rules


def rule_items(rules: list[Rule], docs: list[tuple[str, str, str]]) -> list[tuple[str, str, str, tuple]]:
    """(title, text, source, (question, reference answers, wrong answers)) for each passage a rule fits
    (the first that fits). A rule's wrong answers are the other answers of its kind: with `aliases`,
    every value's group (value and aliases) that shares no string with the references (so English
    is not wrong for British); without, every value the rule drew from the corpus. An answer naming
    one of them is graded wrong, so that listing several candidates does not earn a match."""
    fitted = []
    for title, text, source in docs:
        got = next(((rule, a) for rule in rules if (a := rule.apply(title, text)) is not None), None)
        if got is not None:
            fitted.append((title, text, source, got))
    seen: dict[str, set[str]] = {}
    for *_, (rule, (_, answers)) in fitted:
        seen.setdefault(rule.name, set()).add(answers[0])
    groups = {rule.name: ([[v, *a] for v, a in rule.aliases.items()] if rule.aliases is not None
                          else [[v] for v in sorted(seen.get(rule.name, ()))]) for rule in rules}
    out = []
    for title, text, source, (rule, (question, answers)) in fitted:
        refs = {a.lower() for a in answers}
        wrong = sorted({w for g in groups[rule.name] if not refs & {x.lower() for x in g} for w in g})
        out.append((title, text, source, (question, answers, wrong)))
    return out
