"""`idk`: "I don't know" labels. The answer stage sampled K answers to a question with reference
answers (the prompts file's `answers` field); each sample is judged correct or not, by normalised
match (SQuAD-style: lowercase, no punctuation or articles; correct when a reference equals the
answer or appears in it as whole words, and none of the prompt's known wrong answers, its optional
`wrong_answers` field, does) or by the judge model given the references. The fraction correct is
the P(IK) estimate. None correct (or at most `decline_max_correct`): the SFT target is a decline
drawn (seeded per question) from a file of phrasings, and the pairs are decline > wrong answer. More
correct: the target is the shortest correct sample and the pairs are correct > wrong. All lands in
`record.idk`."""

from __future__ import annotations

import asyncio
import re
import string
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from factory.config import IdkConfig
from factory.engine.caller import Caller, derive_seed, rng
from factory.errors import InputError, ParseError, ParseFailure
from factory.models import GenParams
from factory.prompts import Template, load_template
from factory.records import Candidate, IdkLabel, IdkSample, Record
from factory.stages import Loaded, Stage, StageEntry
from factory.yamlfile import load_yaml

JUDGE_VARIABLES = {"prompt", "references", "answer"}
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation + "\u2018\u2019\u201c\u201d\u2013\u2014")
_YES, _NO = {"yes", "correct", "true", "y"}, {"no", "incorrect", "wrong", "false", "n"}


class DeclineFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = ""
    declines: list[str] = Field(min_length=2, description="honest ways to say 'I don't know' (2 or more)")


def load_declines(prompts_dir: Path, name: str) -> list[str]:
    path = prompts_dir / f"{name}.yaml"
    declines = [d.strip() for d in load_yaml(path, DeclineFile).declines]
    if any(not d for d in declines) or len(set(declines)) < 2:
        raise InputError(path, "needs 2 or more distinct, non-empty phrasings (never one fixed string)",
                         field="declines")
    return declines


def normalise_answer(text: str) -> str:
    """SQuAD's answer normalisation: lowercase, punctuation and articles removed, spaces collapsed."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def match_reference(answer: str, references: list[str], wrong: list[str] = ()) -> str | None:
    """The first reference the answer equals or contains as whole words (after normalisation); None
    also when it names any of `wrong` (answers of the same kind that are wrong), so that an answer
    listing several candidates ("American or English") is not counted correct for naming one."""
    said = f" {normalise_answer(answer)} "
    if any((norm := normalise_answer(w)) and f" {norm} " in said for w in wrong):
        return None
    for ref in references:
        norm = normalise_answer(ref)
        if norm and f" {norm} " in said:
            return ref
    return None


def parse_yes_no(text: str) -> bool:
    words = normalise_answer(text).split()
    if words and words[0] in _YES | _NO:
        return words[0] in _YES
    raise ParseError("expected yes or no")


def references_of(record: Record, field: str) -> list[str] | str:
    """The reference answers, or why there are none (a reason to drop the record)."""
    value = record.metadata.get(field)
    if value is None:
        return "missing_answers"
    refs = [value] if isinstance(value, str) else value
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and normalise_answer(r) for r in refs):
        return "bad_answers"
    return refs


def wrong_of(record: Record, field: str) -> list[str] | str:
    """The item's known wrong answers (none when the field is absent), or why they are unusable."""
    value = record.metadata.get(field, [])
    if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
        return "bad_wrong_answers"
    return value


class IdkStage(Stage):
    name = "idk"

    def __init__(self, cfg: IdkConfig, declines: list[str], judge: Template | None, model: str, seed: int):
        self.cfg, self.declines, self.judge, self.model, self.seed = cfg, declines, judge, model, seed

    async def process(self, record: Record, caller: Caller) -> None:
        st, field = caller.stats[self.name], self.cfg.answers_field
        refs = references_of(record, field)
        if isinstance(refs, str):
            why = "has no" if refs == "missing_answers" else "has an unusable"
            self.drop(record, refs, f"the prompt {why} '{field}' field: give each line a list of reference answer "
                                    f"strings, e.g. {{\"prompt\": \"...\", \"{field}\": [\"Paris\"]}}")
            return
        if isinstance(wrong_of(record, self.cfg.wrong_field), str):
            self.drop(record, "bad_wrong_answers", f"the prompt's '{self.cfg.wrong_field}' field must be a list of "
                                                   "strings (answers of the same kind that are wrong)")
            return
        samples = list(await asyncio.gather(*(self._judge(record, caller, c, refs) for c in record.candidates)))
        right = [s.candidate for s in samples if s.correct]
        wrong = [s.candidate for s in samples if not s.correct]
        text = {c.index: c.answer for c in record.candidates}
        if len(right) > self.cfg.decline_max_correct:
            best = min(right, key=lambda i: (len(text[i]), i))  # the most direct: least room for extra claims
            label, target, decline = "answer", text[best], None
        else:
            decline = rng(self.seed, record.id, "decline").randrange(len(self.declines))
            label, target = "decline", self.declines[decline]
        rejected = wrong if self.cfg.pairs == "each" or not wrong else [rng(self.seed, record.id, "rejected").choice(wrong)]
        st.counters[f"label:{label}"] += 1
        st.counters[f"correct:{len(right)}/{len(samples)}"] += 1
        record.idk = IdkLabel(references=refs, samples=samples, p_ik=round(len(right) / len(samples), 6), label=label,
                              target=target, decline=decline, rejected=rejected)

    async def _judge(self, record: Record, caller: Caller, cand: Candidate, refs: list[str]) -> IdkSample:
        wrong = wrong_of(record, self.cfg.wrong_field)
        matched = match_reference(cand.answer, refs, [] if isinstance(wrong, str) else wrong)
        if self.cfg.match == "normalised" or self.judge is None:
            return IdkSample(candidate=cand.index, correct=matched is not None, by="normalised", matched=matched)
        params = GenParams(temperature=self.cfg.temperature, top_p=self.cfg.top_p, max_tokens=self.cfg.max_tokens,
                           seed=derive_seed(self.seed, record.id, "idk_judge", cand.index))
        variables = {"prompt": record.prompt, "references": refs, "answer": cand.answer}
        try:
            correct, out, ref = await caller.chat_parsed(self.name, f"idk_judge[{cand.index}]", self.judge, variables,
                                                         self.model, params, parse_yes_no)
        except ParseFailure:  # an unreadable judge: fall back to the normalised match, counted
            caller.stats[self.name].counters["judge_unparseable_used_normalised"] += 1
            return IdkSample(candidate=cand.index, correct=matched is not None, by="normalised", matched=matched)
        record.calls.append(ref)
        return IdkSample(candidate=cand.index, correct=correct, by="judge", reply=out.text.strip()[:200])


def load_judge(prompts_dir: Path, cfg: IdkConfig) -> Template | None:
    return load_template(prompts_dir, cfg.template, JUDGE_VARIABLES) if cfg.match == "judge" else None


def _load(prompts_dir: Path, cfg: IdkConfig) -> Loaded:
    judge = load_judge(prompts_dir, cfg)
    return Loaded({"idk_judge": judge} if judge is not None else {}, extra=load_declines(prompts_dir, cfg.declines))


STAGE = StageEntry(
    "idk", load=_load,
    build=lambda pipe, cfg: IdkStage(cfg, pipe.declines, pipe.templates.get("idk_judge"), pipe.specs["idk"],
                                     pipe.cfg.seed),
    rows=lambda cfg: "own",
)
