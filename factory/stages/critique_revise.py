"""`critique_revise`: R rounds of critique then revision per candidate, one principle drawn per
round from the run's seeded RNG, with few-shot examples from the constitution. In a conversation the
critique and the revision concern the assistant's last turn; the earlier turns and the system prompt
are shown to both (template variables `history` and `system`)."""

from __future__ import annotations

import asyncio
import re

from factory.config import CritiqueReviseConfig
from factory.constitution import Constitution
from factory.engine.caller import Caller, derive_seed, rng
from factory.hygiene.gates import revision_gate
from factory.prompts import Template, load_template
from factory.records import Candidate, ConstitutionRef, Record, Round, dialogue_variables, normalise
from factory.stages import Loaded, Stage, StageEntry, params

CRITIQUE_VARIABLES = {"prompt", "response", "principle", "examples", "history", "system"}
REVISION_VARIABLES = CRITIQUE_VARIABLES | {"critique"}

# Preambles models put before a rewrite ("Sure! Here is a revised response:"), and labels.
_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|okay|ok|certainly|of course)[,.!]?\s*)?"
    r"(?:(?:here(?:'s| is)|below is)\s+(?:a|an|the|my)?\s*(?:revised|rewritten|new|updated|improved|better)"
    r"[^:\n]{0,40}:|(?:revised|rewritten|new|updated|improved)\s+(?:response|answer|version)\s*:|revision\s*:)\s*",
    re.IGNORECASE,
)


# A revision that starts by restating the task ("Request: ...") is the template echoed, not an answer.
_ECHO = re.compile(r"^(?:example\s*\d*|request|response|critique|principle|instruction)\s*:", re.IGNORECASE)


def clean_revision(text: str) -> str:
    text = text.strip()
    while (m := _PREAMBLE.match(text)) and m.end() > 0:
        text = text[m.end() :].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" and text.count(text[0]) == 2:
        text = text[1:-1].strip()
    return text


class CritiqueReviseStage(Stage):
    name = "critique_revise"

    def __init__(self, cfg: CritiqueReviseConfig, constitution: Constitution, critique: Template,
                 revision: Template, model: str, seed: int):
        self.cfg, self.constitution, self.model, self.seed = cfg, constitution, model, seed
        self.critique, self.revision = critique, revision

    def examples(self, record: Record, cand: int, rnd: int) -> list[dict]:
        """Few-shot examples for one round; at least one shows an answer that needed no change."""
        pool = self.constitution.examples
        k = min(self.cfg.few_shot, len(pool))
        r = rng(self.seed, record.id, cand, rnd, "examples")
        chosen = r.sample(pool, k)
        unchanged = [e for e in pool if not e.needs_change]
        if k >= 2 and unchanged and all(e.needs_change for e in chosen):
            chosen[-1] = r.choice(unchanged)
        out = []
        for ex in chosen:
            creq, rreq = self.constitution.requests(ex)
            out.append({**ex.model_dump(), "critique_request": creq, "revision_request": rreq})
        return out

    async def process(self, record: Record, caller: Caller) -> None:
        record.constitution = ConstitutionRef(name=self.constitution.label, digest=self.constitution.digest)
        await asyncio.gather(*(self._candidate(record, c, caller) for c in record.candidates))

    async def _candidate(self, record: Record, cand: Candidate, caller: Caller) -> None:
        st = caller.stats[self.name]
        text = cand.answer
        for rnd in range(1, self.cfg.rounds + 1):
            principle = rng(self.seed, record.id, cand.index, rnd, "principle").choice(self.constitution.principles)
            st.counters[f"principle:{principle.id}"] += 1
            variables = {"prompt": record.prompt, "response": text, "principle": principle,
                         "examples": self.examples(record, cand.index, rnd), **dialogue_variables(record)}
            tag = f"[{cand.index}].r{rnd}"
            p = params(self.cfg, derive_seed(self.seed, record.id, "critique", cand.index, rnd))
            context = {"principle": principle.digest()}  # the part of the constitution this call used
            crit, ref = await caller.chat(self.name, "critique" + tag, self.critique, variables, self.model, p,
                                          context=context)
            record.calls.append(ref)
            p = params(self.cfg, derive_seed(self.seed, record.id, "revision", cand.index, rnd))
            variables["critique"] = crit.text.strip()
            rev, ref = await caller.chat(self.name, "revision" + tag, self.revision, variables, self.model, p,
                                         context=context)
            record.calls.append(ref)
            revised = clean_revision(rev.text)
            if not revised or _ECHO.match(revised):  # nothing, or the prompt's own format echoed back
                st.counters["unusable_revision_kept_previous"] += 1
                revised = text
            noop = normalise(revised) == normalise(text)
            st.counters["noop_revision" if noop else "changed_revision"] += 1
            gate = None if noop else self.gate(record.prompt, text, revised)
            if gate:
                st.counters[f"gate:{gate}"] += 1
            cand.rounds.append(Round(principle_id=principle.id, critique=crit.text.strip(), revision=revised, noop=noop,
                                     finish_reason=rev.finish_reason, gate=gate))
            text = text if gate else revised

    def gate(self, prompt: str, before: str, revision: str) -> str | None:
        """Why this revision must not replace the text it revises (a critique, or off the subject)."""
        reason = revision_gate(prompt, before, revision)
        enabled = {"critique": self.cfg.gate_critique, "off_topic": self.cfg.gate_off_topic}
        return reason if reason and enabled[reason] else None


def _load(prompts_dir, cfg: CritiqueReviseConfig) -> Loaded:
    return Loaded({"critique": load_template(prompts_dir, cfg.critique_template, CRITIQUE_VARIABLES),
                   "revision": load_template(prompts_dir, cfg.revision_template, REVISION_VARIABLES)})


STAGE = StageEntry(
    "critique_revise", load=_load,
    build=lambda pipe, cfg: CritiqueReviseStage(cfg, pipe.constitution, pipe.templates["critique"],
                                                pipe.templates["revision"], pipe.specs["critique_revise"], pipe.cfg.seed),
)
