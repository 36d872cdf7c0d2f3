"""`factory run --dry-run`: what a run would call, stage by stage, before anything is spent.

It walks the stage list the run builds (`questions`, then Pipeline.record_stages: answer,
critique_revise, idk, factcheck, judge, each where configured) over the records the run would take
(the seeds after max_seeds and --limit, or the prompts file), renders each call's real template with
every model-written text at its longest, and counts:

- calls: an upper bound, given every reply parses on its first sample. Every candidate is answered,
  critiqued and revised every round; every checked text has max_claims claims; every pair of judge
  options (first answers and distinct revisions) is compared under every drawn principle, in both
  orders, `samples` times; the idk judge grades every answer; question generation makes its
  max_calls (3x the calls its expected_keep yield needs, unless configured) for the prompts --limit
  leaves room for. Only prompts a teacher's `where: prompt` rule matches skip the judge, as in the
  run (a `where: answer` teacher listed before it may take the prompt and leave pairs to the judge).
  A teacher with an `anchor` has its model answer `samples` times for every prompt it may take, on a
  line of its own (stage `judge`, the anchor's model).
  A reply that does not parse is sampled again, up to retries.parse_attempts times: the table's
  note gives that worst case, which a run that parses reaches only on an unreadable model.
- output tokens: an upper bound, max_tokens of every call.
- input tokens: an estimate, 4 characters a token over the rendered prompts. Not a bound: dense text
  (code, CJK) takes more tokens per character. --max-cost therefore reserves by UTF-8 bytes, a bound
  no tokenizer exceeds (factory.engine.prices.token_bound), which would overstate English input about 4x.
- USD: from those figures and prices.yaml.

tests/test_estimate.py checks, for every shipped pipeline against the test server, that the estimate
is at least the real run and at most 3x it, in calls and in USD.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from rich.table import Table

from factory.engine.pipeline import Pipeline
from factory.engine.prices import estimate_tokens
from factory.engine.stats import StageStats
from factory.judging import AppliesWhen
from factory.models.spec import ModelSpec
from factory.prompts import Template
from factory.records import Claim, Evidence, Record, dialogue_variables
from factory.stages.critique_revise import CritiqueReviseStage
from factory.stages.factcheck import SHORT_MAX_TOKENS
from factory.stages.idk import references_of

SAMPLE = 1000  # records whose prompts are rendered; the rest are counted at their average
GENERATED_CHARS = 500  # a generated prompt is at most this long (longer lines are rejected)


@dataclass
class Line:
    stage: str
    model: str
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float | None = 0.0

    def add(self, calls: int, input_tokens: int, output_tokens: int) -> None:
        self.calls += calls
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens


def _tokens(template: Template, dialogue: list | None = None, **variables) -> int:
    return estimate_tokens(sum(len(m["content"]) for m in template.render(dialogue, **variables)))


def _text(max_tokens: int) -> str:
    """A model-written text as long as max_tokens may make it (at the estimate's 4 characters a token)."""
    return "x" * (4 * max_tokens)


def records_of(pipe: Pipeline) -> tuple[int, list[Record], int]:
    """(records the run would take, a sample of them to render, prompts to generate)."""
    if pipe.from_file is not None:
        sample = []
        for rec, dropped in pipe.from_file:
            if not dropped and len(sample) < SAMPLE:
                sample.append(rec)
        return pipe.from_file.records, sample, 0
    source = pipe.source()
    seeds = source.seed_records(StageStats())
    room = source.room(len(seeds))
    generated = [Record.new("x" * GENERATED_CHARS, "generated")] if room else []
    return len(seeds) + room, seeds[:SAMPLE] + generated, room


def estimate(pipe: Pipeline, batch: bool) -> list[Line]:
    n_records, sample, room = records_of(pipe)
    lines: list[Line] = []
    if room:
        source, q = pipe.source(), pipe.cfg.stages.questions
        line = Line("questions", pipe.specs["questions"])
        for mode in source.modes:  # each mode's share of the room, in the order they run
            want, room = min(mode.generate, room), room - min(mode.generate, room)
            calls = source.max_calls(want, mode)
            if calls:
                variables = mode.plan(pipe.cfg.seed, 0, q.questions_per_call)[0]
                line.add(calls, calls * _tokens(mode.template, **variables), calls * q.max_tokens)
        lines.append(line)
    per_record = [(name, pipe.specs[name], STAGES[name](pipe)) for name in pipe.record_stages]  # KeyError: no estimate
    per_record += [("judge", model, count) for count, model in _anchors(pipe)]  # a line per anchor model
    for name, model, count in per_record:
        line = Line(name, model)
        for rec in sample:
            line.add(*count(rec))
        scale = n_records / max(1, len(sample))
        line.calls, line.input_tokens = math.ceil(line.calls * scale), math.ceil(line.input_tokens * scale)
        line.output_tokens = math.ceil(line.output_tokens * scale)
        lines.append(line)
    for line in lines:
        spec = ModelSpec.parse(line.model)
        line.usd = pipe.prices.cost(spec.provider, spec.name, line.input_tokens, line.output_tokens, batch)
    return lines


Count = Callable[[Record], tuple[int, int, int]]  # one record: (calls, input tokens, output tokens)


def _answer(pipe: Pipeline) -> Count:
    a, t = pipe.cfg.stages.answer, pipe.templates["answer"]
    return lambda rec: (a.candidates, a.candidates * _tokens(t, rec.context, prompt=rec.prompt), a.candidates * a.max_tokens)


def _critique_revise(pipe: Pipeline) -> Count:
    st, t = pipe.cfg.stages, pipe.templates
    cr = st.critique_revise
    assert cr is not None
    stage = CritiqueReviseStage(cr, pipe.constitution, t["critique"], t["revision"], pipe.specs["critique_revise"],
                                pipe.cfg.seed)
    principle = max(pipe.constitution.principles, key=lambda p: len(p.critique) + len(p.revision) + len(p.judge or ""))

    def count(rec: Record) -> tuple[int, int, int]:
        tokens = 0
        for cand in range(st.answer.candidates):
            for rnd in range(1, cr.rounds + 1):
                response = _text(st.answer.max_tokens if rnd == 1 else cr.max_tokens)
                variables = {"prompt": rec.prompt, "response": response, "principle": principle,
                             "examples": stage.examples(rec, cand, rnd), **dialogue_variables(rec)}
                tokens += _tokens(t["critique"], **variables)
                tokens += _tokens(t["revision"], **variables, critique=_text(cr.max_tokens))
        calls = 2 * st.answer.candidates * cr.rounds
        return calls, tokens, calls * cr.max_tokens

    return count


def _final_tokens(pipe: Pipeline) -> int:
    st = pipe.cfg.stages
    return max(st.answer.max_tokens, st.critique_revise.max_tokens if st.critique_revise else 0,
               st.factcheck.max_tokens if st.factcheck and st.factcheck.revise else 0)


def _idk(pipe: Pipeline) -> Count:
    st, t = pipe.cfg.stages, pipe.templates.get("idk_judge")
    idk = st.idk
    assert idk is not None
    n = st.answer.candidates

    def count(rec: Record) -> tuple[int, int, int]:
        refs = references_of(rec, idk.answers_field)
        if t is None or isinstance(refs, str):  # normalised match, or a record dropped for its references
            return 0, 0, 0
        return n, n * _tokens(t, prompt=rec.prompt, references=refs, answer=_text(st.answer.max_tokens)), n * idk.max_tokens

    return count


def _factcheck(pipe: Pipeline) -> Count:
    st, t = pipe.cfg.stages, pipe.templates
    fc = st.factcheck
    assert fc is not None
    more = fc.queries - fc.claim_as_query
    revised = st.critique_revise is not None
    texts = 2 if fc.target == "both" and revised else 1
    claim = "x" * 120
    passages = [Evidence(n=1, title="x" * 20, source="", text="x" * fc.passage_chars, cited=False)] * (fc.queries * fc.search.k)

    def check(rec: Record, text: str) -> tuple[int, int, int]:
        calls, tokens, out = 1, _tokens(t["claims"], prompt=rec.prompt, response=text), fc.max_tokens
        verdict = _tokens(t["claim_verdict"], prompt=rec.prompt, claim=claim, passages=passages)
        calls, tokens, out = calls + fc.max_claims, tokens + fc.max_claims * verdict, out + fc.max_claims * SHORT_MAX_TOKENS
        if more > 0:
            queries = _tokens(t["claim_queries"], prompt=rec.prompt, claim=claim, n=more)
            calls, tokens, out = calls + fc.max_claims, tokens + fc.max_claims * queries, out + fc.max_claims * SHORT_MAX_TOKENS * more
        return calls, tokens, out

    def count(rec: Record) -> tuple[int, int, int]:
        one = check(rec, _text(_final_tokens(pipe)))
        calls, tokens, out = (texts * x for x in one)
        if fc.revise:
            bad = [Claim(text=claim, evidence=passages)] * fc.max_claims
            calls, out = calls + 1, out + fc.max_tokens
            tokens += _tokens(t["fact_revision"], prompt=rec.prompt, response=_text(_final_tokens(pipe)), claims=bad)
            if fc.recheck:
                calls, tokens, out = calls + one[0], tokens + one[1], out + one[2]
        n = st.answer.candidates
        return n * calls, n * tokens, n * out

    return count


def _judge(pipe: Pipeline) -> Count:
    st, t = pipe.cfg.stages, pipe.templates["judge"]
    j = st.judge
    assert j is not None
    revised = st.critique_revise is not None or (st.factcheck is not None and st.factcheck.revise)
    options = st.answer.candidates * (2 if j.compare == "both" and revised else 1)
    pairs = options * (options - 1) // 2
    principles = [p for p in pipe.constitution.principles if p.judge]
    principle = max(principles, key=lambda p: len(p.judge or ""), default=None)
    drawn = min(j.principles, len(principles))
    rules = []  # the prompt rules that decide a prompt before any answer rule is tried
    for teacher in j.all_teachers:
        if teacher.where == "answer":
            break
        rules.append(AppliesWhen(mentions=teacher.mentions, regex=teacher.regex))
    answer = _text(_final_tokens(pipe))

    def count(rec: Record) -> tuple[int, int, int]:
        if options < 2 or principle is None or any(w.applies(rec.prompt) for w in rules):
            return 0, 0, 0  # one option is not judged; the teacher ranks the prompts it applies to
        if j.method == "score":
            calls = options * drawn
            tokens = calls * _tokens(t, prompt=rec.prompt, principle=principle, response=answer)
        else:
            calls = pairs * drawn * 2 * j.samples
            tokens = calls * _tokens(t, prompt=rec.prompt, principle=principle, a=answer, b=answer)
        return calls, tokens, calls * j.max_tokens

    return count


def _anchors(pipe: Pipeline) -> list[tuple[Count, str]]:
    """Per anchored teacher: its model's answers, for every prompt no earlier prompt rule takes (and, with a
    rule of its own on the prompt, that it matches)."""
    st = pipe.cfg.stages
    if st.judge is None or "judge" not in pipe.record_stages:
        return []
    a, t = st.answer, pipe.templates["answer"]

    def anchored(n: int, earlier: list[AppliesWhen], mine: AppliesWhen | None) -> Count:
        def count(rec: Record) -> tuple[int, int, int]:
            if any(w.applies(rec.prompt) for w in earlier) or (mine is not None and not mine.applies(rec.prompt)):
                return 0, 0, 0
            return n, n * _tokens(t, rec.context, prompt=rec.prompt), n * a.max_tokens

        return count

    out, before, decided = [], [], True  # `decided`: no answer rule so far, so a prompt rule settles the prompt
    for teacher in st.judge.all_teachers:
        when = AppliesWhen(mentions=teacher.mentions, regex=teacher.regex)
        if teacher.anchor is not None:
            out.append((anchored(teacher.anchor.samples, list(before), when if teacher.where == "prompt" else None),
                        teacher.anchor.model))
        decided = decided and teacher.where == "prompt"
        if decided:
            before.append(when)
    return out


STAGES: dict[str, Callable[[Pipeline], Count]] = {
    "answer": _answer, "critique_revise": _critique_revise, "idk": _idk, "factcheck": _factcheck, "judge": _judge,
}


def estimate_table(lines: list[Line], batch: bool, parse_attempts: int = 1) -> Table:
    title = "Dry run: nothing was called" + (" (Batch API prices)" if batch else "")
    caption = ("calls and output tokens are upper bounds when every reply parses; input tokens are estimated at "
               "4 characters a token, so USD is an estimate")
    if parse_attempts > 1:
        caption += (f"; if every reply had to be sampled {parse_attempts} times, calls and USD would be up to "
                    f"{parse_attempts}x these")
    table = Table(title=title, caption=caption)
    for col in ("stage", "model", "calls (max)", "input tokens (est.)", "output tokens (max)", "USD (est.)"):
        table.add_column(col, justify="left" if col in ("stage", "model") else "right")
    for line in lines:
        usd = "no price" if line.usd is None else f"{line.usd:.4f}"
        table.add_row(line.stage, line.model, f"{line.calls:,}", f"{line.input_tokens:,}", f"{line.output_tokens:,}", usd)
    known = [line.usd for line in lines if line.usd is not None]
    total = f"{sum(known):.4f}" + (" + unpriced" if len(known) < len(lines) else "")
    table.add_row("total", "", f"{sum(x.calls for x in lines):,}", f"{sum(x.input_tokens for x in lines):,}",
                  f"{sum(x.output_tokens for x in lines):,}", total, style="bold")
    return table
