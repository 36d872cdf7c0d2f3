"""Prompt templates: one YAML file per prompt in prompts/, with `system` and `user` parts in Jinja.

Undefined variables are errors: checked against what the stage provides when the template loads,
and again at render time (StrictUndefined) for attributes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import jinja2
from jinja2 import meta
from pydantic import BaseModel, ConfigDict, Field

from factory.errors import InputError
from factory.models import Message
from factory.yamlfile import load_yaml, read_text

_env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, autoescape=False)


class TemplateFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = ""
    system: str | None = None
    user: str
    prefill: str | None = Field(default=None, description="the start of the reply, for backends that can continue one")
    stop: list[str] = Field(default_factory=list, max_length=4, description="stop sequences (OpenAI allows 4)")


@dataclass(frozen=True)
class Template:
    name: str
    path: Path
    digest: str
    system: jinja2.Template | None
    user: jinja2.Template
    stop: tuple[str, ...] = ()
    prefill: str | None = None  # plain text, not a template: the reply starts with it where the backend allows


    def render(self, dialogue: list[Message] | None = None, **variables: object) -> list[Message]:
        """The messages of one call. `dialogue`: a conversation's system prompt and earlier turns, sent
        as chat turns before this template's user turn; its system prompt replaces the template's (the
        conversation's own instructions are the ones its answer must follow)."""
        dialogue = dialogue or []
        try:
            messages: list[Message] = []
            own_system = [m for m in dialogue if m["role"] == "system"]
            if own_system:
                messages.extend(own_system)
            elif self.system is not None:
                messages.append({"role": "system", "content": self.system.render(**variables).strip()})
            messages.extend(m for m in dialogue if m["role"] != "system")
            messages.append({"role": "user", "content": self.user.render(**variables).strip()})
            if self.prefill:
                messages.append({"role": "assistant", "content": self.prefill})
        except jinja2.UndefinedError as e:
            raise InputError(self.path, f"template uses something undefined: {e.message}") from None
        return messages


def load_template(prompts_dir: Path, name: str, provided: set[str]) -> Template:
    """Load prompts/NAME.yaml and check it uses only the variables the stage provides."""
    path = prompts_dir / f"{name}.yaml"
    spec = load_yaml(path, TemplateFile)
    text = read_text(path)
    compiled = {}
    for part in ("system", "user"):
        source = getattr(spec, part)
        if source is None:
            continue
        try:
            ast = _env.parse(source)
        except jinja2.TemplateSyntaxError as e:
            raise InputError(path, f"template syntax error: {e.message}", field=part) from None
        unknown = sorted(meta.find_undeclared_variables(ast) - provided)
        if unknown:
            raise InputError(
                path,
                f"uses undefined variable '{unknown[0]}' (this stage provides: {', '.join(sorted(provided))})",
                line=line_of(text, unknown[0]),
                field=part,
            )
        compiled[part] = _env.from_string(source)
    return Template(
        name=name,
        path=path,
        digest=hashlib.sha256(text.encode()).hexdigest(),
        system=compiled.get("system"),
        user=compiled["user"],
        stop=tuple(spec.stop),
        prefill=spec.prefill,
    )


def line_of(text: str, variable: str) -> int | None:
    pattern = re.compile(r"[{][{%].*?\b" + re.escape(variable) + r"\b")
    for i, line in enumerate(text.splitlines(), 1):
        if pattern.search(line):
            return i
    return None
