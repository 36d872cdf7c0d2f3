"""The outputs: critique and revision requests for each kept principle, few-shot examples from the
pairs, the constitution YAML (ranked, each principle annotated with its figures) and report.html.

The judge text of a proposed principle is the principle exactly as tested, so the figures describe
it; the model writes its critique and revision requests from it. A seed principle keeps its own
texts. Each kept principle gets one few-shot example: the held-out pair it decided most clearly
for the chosen answer, the rejected answer as the response, the model's critique of it (the
pipeline's own critique template with the new critique request) and the chosen answer as the
revision. The best-ranked principle's example is repeated with the chosen answer as both response
and revision, and a critique that says it meets the principle (`discover/no_change`): small models
need an example that needed no change. Principle annotations are YAML comments: the constitution
schema has no place for figures, and comments keep the file valid and editable.
"""

from __future__ import annotations

import asyncio
import os
import re
from importlib.resources import files
from pathlib import Path

import yaml
from jinja2 import Environment, StrictUndefined

from factory.constitution import ID_PATTERN, Constitution, Principle
from factory.discover.prefs import PrefPair
from factory.discover.propose import OPENING
from factory.discover.score import Result
from factory.engine.caller import Caller, ParseError, ParseFailure, derive_seed
from factory.errors import ModelCallError
from factory.models import GenParams
from factory.prompts import Template

REQUEST_MAX_TOKENS, EXAMPLE_MAX_TOKENS = 80, 160  # one sentence; a short critique
STOP_WORDS = {"a", "an", "the", "is", "are", "that", "more", "most", "of", "to", "and", "or", "about", "its", "it"}


def first_line(text: str) -> str:
    """The first non-empty line, without quotes or a list marker; ParseError if it is too short."""
    for line in text.strip().splitlines():
        line = re.sub(r"^\s*(?:[-*]|\d+[.)])?\s*", "", line).strip().strip("\"'").strip()
        if line:
            if len(line.split()) < 4:
                raise ParseError(f"too short to be a request: {line!r}")
            return line
    raise ParseError("empty reply")


def slug(text: str, taken: set[str], fallback: str) -> str:
    """A short principle id from the principle's words ("negative-dogemoon"), unique among `taken`."""
    words = [w for w in re.findall(r"[a-z0-9]+", OPENING.sub("", text).lower()) if w not in STOP_WORDS]
    base = "-".join(words[:4])[:40].strip("-") or fallback
    if not re.match(ID_PATTERN, base):
        base = fallback
    out, n = base, 2
    while out in taken:
        out, n = f"{base}-{n}", n + 1
    taken.add(out)
    return out


async def _text(caller: Caller, template: Template, principle: str, model: str, seed: int, temperature: float) -> str:
    params = GenParams(temperature=temperature, max_tokens=REQUEST_MAX_TOKENS,
                       seed=derive_seed(seed, principle, template.name))
    text, _, _ = await caller.chat_parsed("write", template.name, template, {"principle": principle}, model, params,
                                          first_line)
    return text


async def write_principles(kept: list[Result], pairs: list[PrefPair], caller: Caller, templates: dict[str, Template],
                           model: str, seed: int, temperature: float) -> tuple[list[dict], list[dict], list[Result]]:
    """(principles, examples, results written) for the constitution, in rank order. A proposed principle
    whose requests never parse is left out and counted (`caller.stats['write']`)."""
    st = caller.stats["write"]

    async def one(r: Result) -> tuple[dict, dict | None] | None:
        c = r.candidate
        if c.seed is not None:
            principle = c.seed.model_dump(exclude_none=True)
        else:
            try:
                critique, revision = await asyncio.gather(
                    _text(caller, templates["critique_request"], c.judge, model, seed, temperature),
                    _text(caller, templates["revision_request"], c.judge, model, seed, temperature))
            except ParseFailure:
                st.drop("requests_unreadable")
                return None
            except ModelCallError as e:
                if e.fatal:
                    raise
                st.drop("call_failed")
                return None
            principle = {"id": c.id, "critique": critique, "revision": revision, "judge": c.judge}
        return principle, await example(r, Principle(**principle), pairs, caller, templates["critique"], model, seed,
                                       temperature)

    done = await asyncio.gather(*(one(r) for r in kept))
    written = [(r, d) for r, d in zip(kept, done) if d is not None]
    st.records_out = len(written)
    examples = [d[1] for _, d in written if d[1] is not None]
    if examples:  # the chosen answer of the best-ranked example: one that needed no change
        first = examples[0]
        principle = Principle(**next(d[0] for _, d in written if d[0]["id"] == first["principle"]))
        critique = await _critique(caller, templates["no_change"], {"prompt": first["prompt"], "response":
                                   first["revision"], "principle": principle}, model, seed, temperature, "no change")
        if critique is not None:
            examples.append(first | {"response": first["revision"], "critique": critique})
    return [d[0] for _, d in written], examples, [r for r, _ in written]


async def example(r: Result, principle: Principle, pairs: list[PrefPair], caller: Caller, template: Template,
                  model: str, seed: int, temperature: float) -> dict | None:
    """The pair the principle decided most clearly for the chosen answer, as a worked example."""
    best = max((i for i, d in enumerate(r.decisive) if d and r.ps[i] > 0.5), key=lambda i: r.ps[i], default=None)
    if best is None:
        return None
    p = pairs[best]
    variables = {"prompt": p.prompt, "response": p.rejected, "principle": principle, "examples": []}
    critique = await _critique(caller, template, variables, model, seed, temperature, p.where)
    if critique is None:
        return None
    return {"prompt": p.prompt, "response": p.rejected, "principle": principle.id, "critique": critique,
            "revision": p.chosen}


async def _critique(caller: Caller, template: Template, variables: dict, model: str, seed: int, temperature: float,
                    purpose: str) -> str | None:
    """An example's critique, written by the model; None (counted) when it never reads as one."""
    params = GenParams(temperature=temperature, max_tokens=EXAMPLE_MAX_TOKENS,
                       seed=derive_seed(seed, purpose, variables["principle"].id, "example"))

    def readable(text: str) -> str:
        if len(text.split()) < 4:
            raise ParseError("critique too short")
        return text.strip()

    try:
        critique, _, _ = await caller.chat_parsed("write", f"example {purpose}", template, variables, model, params,
                                                  readable)
    except (ParseFailure, ModelCallError) as e:
        if isinstance(e, ModelCallError) and e.fatal:
            raise
        caller.stats["write"].drop("example_critique_unreadable")
        return None
    return critique


def annotation(rank: int, r: Result) -> str:
    lo, hi = r.ci95
    acc = "-" if r.accuracy_decisive is None else f"{r.accuracy_decisive:.2f}"
    lines = [f"rank {rank}: agreement {r.agreement:.3f} (95% CI {lo:.3f}-{hi:.3f}), coverage {r.coverage:.2f}, "
             f"accuracy when decisive {acc}",
             ("from the seed constitution" if r.candidate.origin == "seed" else
              f"proposed for {r.candidate.support} pair(s)")
             + (f"; same decisions as (merged): {', '.join(r.merged)}" if r.merged else "")]
    return "".join(f"  # {line}\n" for line in lines)


def constitution_yaml(name: str, description: str, principles: list[dict], examples: list[dict],
                      results: list[Result], header: list[str]) -> str:
    """The constitution file: validated, principles ranked and annotated with comments."""
    data = {"name": name, "version": "1.0.0", "description": description, "principles": principles,
            "examples": examples}
    Constitution.model_validate(data)

    def dump(obj: object) -> str:
        return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, width=100)

    out = "".join(f"# {line}\n" for line in header)
    out += dump({k: data[k] for k in ("name", "version", "description")})
    out += "\nprinciples:\n"
    for rank, (p, r) in enumerate(zip(principles, results, strict=True), 1):
        out += annotation(rank, r) + "".join(f"  {line}\n" for line in dump([p]).splitlines()) + "\n"
    if examples:
        out += dump({"examples": examples})
    return out


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def report_html(summary: dict, results: list[Result], pairs: list[PrefPair], examples_per_principle: int = 3) -> str:
    """report.html: the table of every tested principle, and example held-out pairs per principle
    (where it agreed most clearly, and where it disagreed)."""
    env = Environment(undefined=StrictUndefined, autoescape=True, trim_blocks=True, lstrip_blocks=True)
    page = env.from_string(files("factory.discover").joinpath("report.html").read_text(encoding="utf-8"))
    rows = []
    for r in results:
        order = sorted((i for i, d in enumerate(r.decisive) if d), key=lambda i: -(r.ps[i] or 0.5))
        right = [i for i in order if r.ps[i] > 0.5][:examples_per_principle]
        wrong = [i for i in reversed(order) if r.ps[i] < 0.5][:1]
        rows.append({"r": r.to_dict(), "examples": [{"pair": pairs[i], "p": r.ps[i], "agrees": r.ps[i] > 0.5}
                                                    for i in right + wrong]})
    return page.render(summary=summary, rows=rows)
