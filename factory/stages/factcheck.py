"""`factcheck`: SAFE-style fact checking of each candidate's answer via search.

Per checked text: one call lists its atomic claims, each already rewritten to stand alone (split
and self-contained rewrite in one call: cheaper, and a small model cannot follow a second pass
better than the first). Per claim: up to Q search queries (the claim itself first, the model
writes the rest), top k passages per query deduplicated by source, and one verdict call
(Supported / Not supported / Irrelevant, citing passage numbers). Irrelevant claims count in
neither S nor N. Everything lands in `record.facts`, scores per text in each FactCheck.

Actions, in order: `revise` (one more revision round on the unsupported claims and their evidence,
a Round with principle_id `fact-check`; `recheck` checks the new text), `drop_below` (answers whose
latest check scores below the threshold are removed; the record is dropped when none is left),
`prefer` (the best-supported checked text over the worst, for export)."""

from __future__ import annotations

import asyncio
import hashlib
from functools import partial
from pathlib import Path

from factory.config import FactCheckConfig
from factory.engine.caller import Caller, derive_seed
from factory.errors import FactoryError, ParseFailure
from factory.judging.facts import metric_of, parse_claims, parse_queries, parse_verdict, score, unsupported
from factory.models import GenParams
from factory.prompts import Template, load_template
from factory.records import Candidate, Claim, Evidence, FactCheck, FactPair, FactReport, Record, Round, normalise
from factory.search import SearchBackend
from factory.stages import Loaded, Stage, StageEntry
from factory.stages.critique_revise import clean_revision

CLAIMS_VARIABLES = {"prompt", "response"}
QUERIES_VARIABLES = {"prompt", "claim", "n"}
VERDICT_VARIABLES = {"prompt", "claim", "passages"}
REVISION_VARIABLES = {"prompt", "response", "claims"}
SHORT_MAX_TOKENS = 64  # queries and verdicts are a few short lines
PRINCIPLE_ID = "fact-check"


def load_templates(prompts_dir: Path, cfg: FactCheckConfig) -> dict[str, Template]:
    return {
        "claims": load_template(prompts_dir, cfg.claims_template, CLAIMS_VARIABLES),
        "claim_queries": load_template(prompts_dir, cfg.queries_template, QUERIES_VARIABLES),
        "claim_verdict": load_template(prompts_dir, cfg.verdict_template, VERDICT_VARIABLES),
        **({"fact_revision": load_template(prompts_dir, cfg.revision_template, REVISION_VARIABLES)}
           if cfg.revise else {}),
    }


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class FactCheckStage(Stage):
    name = "factcheck"

    def __init__(self, cfg: FactCheckConfig, templates: dict[str, Template], model: str, seed: int,
                 search: SearchBackend):
        self.cfg, self.t, self.model, self.seed, self.search = cfg, templates, model, seed, search

    def _params(self, max_tokens: int, *parts: object) -> GenParams:
        """Seeded by the text, not the record: the same text checked twice is one cached call."""
        return GenParams(temperature=self.cfg.temperature, top_p=self.cfg.top_p, max_tokens=max_tokens,
                         seed=derive_seed(self.seed, "factcheck", *parts))

    async def process(self, record: Record, caller: Caller) -> None:
        report = record.facts = FactReport(k=self.cfg.f1_k, prefer=self.cfg.prefer)
        texts = [(c.index, kind, text) for c in record.candidates for kind, text in self._texts(c)]
        report.checks = list(await asyncio.gather(*(self.check(record, caller, *t) for t in texts)))
        if self.cfg.revise:
            await asyncio.gather(*(self._revise(record, caller, c) for c in record.candidates))
        if self.cfg.drop_below is not None:
            self._drop_below(record, caller)
        if self.cfg.prefer and not record.dropped:
            self._prefer(record, caller)

    def _texts(self, cand: Candidate) -> list[tuple[str, str]]:
        """(kind, text) to check: the first answer and/or the final text, each distinct text once."""
        if self.cfg.target == "initial":
            return [("initial", cand.answer)]
        if self.cfg.target == "final" or normalise(cand.final) == normalise(cand.answer):
            return [("final", cand.final)]
        return [("initial", cand.answer), ("final", cand.final)]

    async def check(self, record: Record, caller: Caller, cand: int, kind: str, text: str) -> FactCheck:
        st = caller.stats[self.name]
        variables = {"prompt": record.prompt, "response": text}
        params = self._params(self.cfg.max_tokens, "claims", _digest(text))
        try:
            found, _, ref = await caller.chat_parsed(self.name, f"claims[{cand}].{kind}", self.t["claims"], variables,
                                                     self.model, params, partial(parse_claims, limit=self.cfg.max_claims))
            record.calls.append(ref)
        except ParseFailure:
            st.counters["claims_unparseable"] += 1
            found = []
        st.counters["claims"] += len(found)
        tag = f"[{cand}].{kind}"
        claims = await asyncio.gather(*(self._claim(record, caller, f"{tag}.c{i}", c) for i, c in enumerate(found)))
        check = score(FactCheck(candidate=cand, kind=kind, text=text, claims=list(claims)),  # type: ignore[arg-type]
                      self.cfg.f1_k)
        for claim in claims:
            st.counters[f"verdict:{claim.verdict or 'unparseable'}"] += 1
        return check

    async def _claim(self, record: Record, caller: Caller, tag: str, text: str) -> Claim:
        st = caller.stats[self.name]
        queries = [text] if self.cfg.claim_as_query else []
        more = self.cfg.queries - len(queries)
        if more > 0:
            out, ref = await caller.chat(self.name, f"queries{tag}", self.t["claim_queries"],
                                         {"prompt": record.prompt, "claim": text, "n": more}, self.model,
                                         self._params(SHORT_MAX_TOKENS * more, "queries", _digest(text), more))
            record.calls.append(ref)
            written = [q for q in parse_queries(out.text, more) if q != text]
            if not written and not queries:
                st.counters["queries_fell_back_to_claim"] += 1
                written = [text]
            queries += written
        hits = await asyncio.gather(*(caller.search(self.name, self.search, q, self.cfg.search.k) for q in queries))
        evidence: list[Evidence] = []
        for passage in (p for found in hits for p in found):
            if all(e.source != passage.source for e in evidence):
                evidence.append(Evidence(n=len(evidence) + 1, title=passage.title, source=passage.source,
                                         text=passage.text[:self.cfg.passage_chars], cited=False))
        claim = Claim(text=text, queries=queries, evidence=evidence)
        variables = {"prompt": record.prompt, "claim": text, "passages": evidence}
        params = self._params(SHORT_MAX_TOKENS, "verdict", _digest(text), *(e.source for e in evidence))
        try:
            (claim.verdict, cited), out, ref = await caller.chat_parsed(
                self.name, f"verdict{tag}", self.t["claim_verdict"], variables, self.model, params,
                partial(parse_verdict, passages=len(evidence)))
            record.calls.append(ref)
            claim.reply = out.text.strip()[:300]
            for e in evidence:
                e.cited = e.n in cited
        except ParseFailure:
            pass  # verdict None: counted by `check`, excluded from the scores
        return claim

    async def _revise(self, record: Record, caller: Caller, cand: Candidate) -> None:
        st = caller.stats[self.name]
        report = record.facts
        assert report is not None
        check = report.scores_of(cand.final)
        bad = unsupported(check) if check else []
        if not bad:
            return
        previous = cand.final
        variables = {"prompt": record.prompt, "response": previous, "claims": bad}
        out, ref = await caller.chat(self.name, f"fact_revision[{cand.index}]", self.t["fact_revision"], variables,
                                     self.model, self._params(self.cfg.max_tokens, "revision", _digest(previous)))
        record.calls.append(ref)
        revised = clean_revision(out.text)
        if not revised:
            st.counters["unusable_revision_kept_previous"] += 1
            revised = previous
        noop = normalise(revised) == normalise(previous)
        st.counters["noop_fact_revision" if noop else "fact_revision"] += 1
        cand.rounds.append(Round(principle_id=PRINCIPLE_ID, critique="\n".join(f"- {c.text}" for c in bad),
                                 revision=revised, noop=noop, finish_reason=out.finish_reason))
        if self.cfg.recheck and not noop:
            report.checks.append(await self.check(record, caller, cand.index, "revised", revised))

    def latest(self, record: Record, cand: int) -> FactCheck | None:
        assert record.facts is not None
        return next((c for c in reversed(record.facts.checks) if c.candidate == cand), None)

    def _drop_below(self, record: Record, caller: Caller) -> None:
        st, threshold, metric = caller.stats[self.name], self.cfg.drop_below, self.cfg.metric
        kept = []
        for cand in record.candidates:
            check = self.latest(record, cand.index)
            if check is not None and metric_of(check, metric) < threshold:  # type: ignore[operator]
                st.counters["candidate_below_threshold"] += 1
            else:
                kept.append(cand)
        if not kept:
            self.drop(record, "fact_score_below_threshold",
                      f"every answer's {metric} is below drop_below {threshold}")
        else:
            record.candidates = kept

    def _prefer(self, record: Record, caller: Caller) -> None:
        """One pair: the best-supported checked text over the worst, of the candidates left."""
        report, metric = record.facts, self.cfg.metric
        assert report is not None
        alive = {c.index for c in record.candidates}
        options = [i for i, c in enumerate(report.checks) if c.candidate in alive]
        if len(options) < 2:
            caller.stats[self.name].counters["prefer:single_text"] += 1
            return
        ranked = sorted(options, key=lambda i: (-metric_of(report.checks[i], metric), i))
        best, worst = ranked[0], ranked[-1]
        hi, lo = metric_of(report.checks[best], metric), metric_of(report.checks[worst], metric)
        if hi <= lo:
            caller.stats[self.name].counters["prefer:tie"] += 1
            return
        report.pairs.append(FactPair(chosen=best, rejected=worst, metric=metric, score_chosen=hi, score_rejected=lo))


def _build(pipe, cfg: FactCheckConfig) -> FactCheckStage:
    if pipe.search is None:
        raise FactoryError("the fact-check stage needs its search backend: call load_models() first")
    return FactCheckStage(cfg, pipe.templates, pipe.specs["factcheck"], pipe.cfg.seed, pipe.search)


STAGE = StageEntry(
    "factcheck", load=lambda prompts_dir, cfg: Loaded(load_templates(prompts_dir, cfg)), build=_build,
    rows=lambda cfg: "own" if cfg.prefer else "annotate",
    feeds=frozenset({"critique_revise"}),  # `prefer` ranks the revisions it checked
)
