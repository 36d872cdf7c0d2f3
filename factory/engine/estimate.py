"""`factory run --dry-run`: calls, tokens and cost before anything is spent.

Input tokens are counted from the real rendered prompts (on a sample of up to SAMPLE records,
scaled up), at about 4 characters a token; outputs are counted at each stage's max_tokens, so
output tokens and the cost are upper bounds."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from rich.table import Table

from factory.engine.pipeline import Pipeline
from factory.engine.prices import estimate_tokens
from factory.models.spec import ModelSpec
from factory.records import Evidence, Record
from factory.stages.critique_revise import CritiqueReviseStage
from factory.stages.factcheck import SHORT_MAX_TOKENS

SAMPLE = 1000


@dataclass
class Line:
    stage: str
    model: str
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float | None = 0.0


def _chars(messages: list) -> int:
    return sum(len(m["content"]) for m in messages)


def estimate(pipe: Pipeline, batch: bool) -> list[Line]:
    st, t = pipe.cfg.stages, pipe.templates
    if pipe.from_file is not None:
        n_records = pipe.from_file.count - pipe.from_file.duplicates
        sample = [rec for rec, dup in itertools.islice(pipe.from_file, SAMPLE) if not dup]
    else:
        seeds = {r.id: r for r in pipe.seeds}.values() if st.questions.include_seeds else []
        n_seeds = min(len(seeds), st.questions.max_seeds if st.questions.max_seeds is not None else len(seeds))
        n_records = n_seeds + st.questions.generate
        if pipe.limit is not None:
            n_records = min(n_records, pipe.limit)
        sample = list(seeds)[:SAMPLE] or list(pipe.seeds)[:SAMPLE]
    lines = []
    if pipe.generating:
        q = st.questions
        calls = math.ceil(q.generate / q.questions_per_call)
        variables = {"examples": [r.prompt for r in pipe.seeds[: q.examples_per_call]], "n": q.questions_per_call}
        lines.append(Line("questions", pipe.specs["questions"], calls,
                          calls * estimate_tokens(_chars(t["questions"].render(**variables))), calls * q.max_tokens))
    answer, cr = st.answer, st.critique_revise
    critique_stage = CritiqueReviseStage(cr, pipe.constitution, t["critique"], t["revision"],
                                         pipe.specs["critique_revise"], pipe.cfg.seed) if cr else None
    placeholder = "x" * (4 * answer.max_tokens)  # an answer as long as it may be
    a_in = c_in = r_in = 0
    for rec in sample or [Record.new("placeholder", "file")]:
        a_in += estimate_tokens(_chars(t["answer"].render(prompt=rec.prompt)))
        if critique_stage is None or cr is None:
            continue
        variables = {"prompt": rec.prompt, "response": placeholder, "principle": pipe.constitution.principles[0],
                     "examples": critique_stage.examples(rec, 0, 1)}
        c_in += estimate_tokens(_chars(t["critique"].render(**variables)))
        r_in += estimate_tokens(_chars(t["revision"].render(**variables, critique="x" * 4 * cr.max_tokens)))
    k = n_records / max(1, len(sample))
    per = answer.candidates
    lines.append(Line("answer", pipe.specs["answer"], n_records * per, round(a_in * k * per),
                      n_records * per * answer.max_tokens))
    if cr is not None:
        rounds = per * cr.rounds
        lines.append(Line("critique_revise", pipe.specs["critique_revise"], n_records * rounds * 2,
                          round((c_in + r_in) * k * rounds), n_records * rounds * 2 * cr.max_tokens))
    prompt = (sample or [Record.new("placeholder", "file")])[0].prompt
    lines += _labelling(pipe, prompt, n_records * per, placeholder)
    for line in lines:
        spec = ModelSpec.parse(line.model)
        line.usd = pipe.prices.cost(spec.provider, spec.name, line.input_tokens, line.output_tokens, batch)
    return lines


def _labelling(pipe: Pipeline, prompt: str, answers: int, answer: str) -> list[Line]:
    """The idk judge and the fact checker: every answer judged; every checked text at max_claims
    claims, each with its queries call and a verdict over queries x k passages (an upper bound)."""
    st, t, lines = pipe.cfg.stages, pipe.templates, []
    if st.idk is not None and "idk_judge" in t:
        tokens = estimate_tokens(_chars(t["idk_judge"].render(prompt=prompt, references=["x" * 20], answer=answer)))
        lines.append(Line("idk", pipe.specs["idk"], answers, answers * tokens, answers * st.idk.max_tokens))
    if (fc := st.factcheck) is not None:
        texts, claim, more = answers * (2 if fc.target == "both" else 1), "x" * 120, fc.queries - fc.claim_as_query
        shown = [Evidence(n=1, title="x" * 20, source="", text="x" * fc.passage_chars, cited=False)]
        claims_in = estimate_tokens(_chars(t["claims"].render(prompt=prompt, response=answer)))
        verdict_in = estimate_tokens(_chars(t["claim_verdict"].render(prompt=prompt, claim=claim,
                                                                      passages=shown * fc.queries * fc.search.k)))
        queries_in = estimate_tokens(_chars(t["claim_queries"].render(prompt=prompt, claim=claim, n=max(more, 1))))
        per_claim = (1 + (more > 0), verdict_in + (more > 0) * queries_in, SHORT_MAX_TOKENS * (1 + max(more, 0)))
        revise = (fc.revise, fc.revise * (claims_in + verdict_in), fc.revise * fc.max_tokens)
        lines.append(Line("factcheck", pipe.specs["factcheck"],
                          texts * (1 + fc.max_claims * per_claim[0] + revise[0]),
                          texts * (claims_in + fc.max_claims * per_claim[1] + revise[1]),
                          texts * (fc.max_tokens + fc.max_claims * per_claim[2] + revise[2])))
    return lines


def estimate_table(lines: list[Line], batch: bool) -> Table:
    table = Table(title="Dry run: nothing was called" + (" (Batch API prices)" if batch else ""))
    for col in ("stage", "model", "calls", "input tokens (est.)", "output tokens (max)", "USD (max)"):
        table.add_column(col, justify="left" if col in ("stage", "model") else "right")
    for line in lines:
        usd = "no price" if line.usd is None else f"{line.usd:.4f}"
        table.add_row(line.stage, line.model, f"{line.calls:,}", f"{line.input_tokens:,}", f"{line.output_tokens:,}", usd)
    known = [line.usd for line in lines if line.usd is not None]
    total = f"{sum(known):.4f}" + (" + unpriced" if len(known) < len(lines) else "")
    table.add_row("total", "", f"{sum(x.calls for x in lines):,}", f"{sum(x.input_tokens for x in lines):,}",
                  f"{sum(x.output_tokens for x in lines):,}", total, style="bold")
    return table
