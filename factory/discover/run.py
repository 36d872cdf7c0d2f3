"""`factory constitution discover PREFS --out FILE`: the whole command, and its dry run.

Order of work: read and validate everything (the preference data, the split sizes, the seed
constitution, the pipeline config and templates, the output path), and only then create the work
folder and call a model. The work folder (default outputs/discover-NAME) holds calls.sqlite, so a
second run on the same data reuses every call; discover.json (every figure) and report.html.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table

from factory.config import ROOT, JudgeConfig, load_config
from factory.constitution import ID_PATTERN, Principle, load_constitution
from factory.discover import propose as proposal
from factory.discover.prefs import PrefPair, read_pairs, split_by_prompt
from factory.discover.score import Candidate, Result, decide, judge_all, measure
from factory.discover.write import (
    EXAMPLE_MAX_TOKENS,
    REQUEST_MAX_TOKENS,
    constitution_yaml,
    report_html,
    slug,
    write_atomic,
    write_principles,
)
from factory.engine.calllog import CallLog
from factory.engine.estimate import Line, estimate_table
from factory.engine.pipeline import Overrides, Pipeline
from factory.engine.prices import Budget, BudgetExceeded, estimate_tokens
from factory.engine.rundir import now, write_json
from factory.engine.stats import Stats
from factory.errors import FactoryError, InputError, ModelCallError, StoppedAtBudget
from factory.models.spec import ModelSpec
from factory.prompts import Template, load_template
from factory.stages.critique_revise import CRITIQUE_VARIABLES
from factory.stages.judge import template_for

PROPOSE_MAX_TOKENS = 120  # a few one-line principles


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(default=None, description="one model for every step (default: the config's)")
    config: Path | None = None
    name: str | None = Field(default=None, description="constitution name (default: from --out)")
    proposal_pairs: int = Field(default=32, ge=0, description="pairs the model explains (0: test seeds only)")
    per_pair: int = Field(default=3, ge=1, le=10, description="principles asked for per proposal pair")
    max_candidates: int = Field(default=16, ge=1, description="most-proposed clusters tested")
    heldout: float = Field(default=0.3, gt=0, lt=1, description="share of prompts held out for testing")
    max_heldout: int = Field(default=200, ge=1, description="held-out pairs used at most")
    min_heldout: int = Field(default=10, ge=1, description="fewer held-out pairs than this is an error")
    margin: float = Field(default=0.05, ge=0, lt=0.5, description="agreement must reach 0.5 + margin")
    decisive: float = Field(default=0.1, gt=0, lt=0.5, description="|P - 0.5| from which a verdict is decisive")
    temperature: float = Field(default=0.7, ge=0, le=2, description="for proposals and written requests")
    seed: int = 0
    max_cost: float | None = Field(default=None, gt=0)


@dataclass
class Plan:
    """Everything validated, nothing called yet."""

    prefs: Path
    out: Path
    name: str
    work: Path
    settings: Settings
    pairs: list[PrefPair]
    train: list[PrefPair]
    held: list[PrefPair]
    seeds: list[Candidate]
    untestable: list[str]
    pipe: Pipeline
    judge_cfg: JudgeConfig
    templates: dict[str, Template]


def plan(prefs: Path, out: Path, s: Settings, seed_constitution: Path | None, work: Path | None) -> Plan:
    name = s.name or out.stem.lower().replace(" ", "-").replace("_", "-")
    if not re.match(ID_PATTERN, name):
        raise FactoryError(f"constitution name {name!r} is not a valid id (lower-case letters, digits, - and _); "
                           "pass --name")
    if out.exists():
        raise FactoryError(f"{out}: already exists; choose another --out (discovery never overwrites a constitution)")
    pairs = read_pairs(prefs)
    train, held = split_by_prompt(pairs, s.heldout, s.seed)
    held = held[:s.max_heldout]
    if len(held) < s.min_heldout:
        raise InputError(prefs, f"{len(pairs)} pairs over {len({p.prompt_id for p in pairs})} prompts leave "
                         f"{len(held)} held-out pairs (the split is by prompt, {s.heldout:.0%} of prompts); testing "
                         f"needs at least {s.min_heldout}: add pairs with more distinct prompts, raise --heldout or "
                         "lower --min-heldout", field="prompt")
    if s.proposal_pairs and not train:
        raise InputError(prefs, "no pairs left for proposals after the held-out split; lower --heldout",
                         field="prompt")
    seeds, untestable = [], []
    if seed_constitution is not None:
        for p in load_constitution(seed_constitution).principles:
            if p.judge:
                seeds.append(Candidate(id=p.id, judge=p.judge, origin="seed", wordings=[p.judge], seed=p))
            else:
                untestable.append(p.id)
        if not seeds:
            raise FactoryError(f"{seed_constitution}: no principle has a `judge:` text, so none can be tested")
    if not s.proposal_pairs and not seeds:
        raise FactoryError("nothing to test: --proposals 0 needs --seed-constitution")
    cfg = load_config(s.config)
    pipe = Pipeline.prepare(cfg, Overrides(model=s.model or cfg.model, seed=s.seed, max_cost=s.max_cost),
                            needs_seeds=False)
    jcfg = pipe.cfg.stages.judge or JudgeConfig()
    pdir = pipe.cfg.path(pipe.cfg.prompts_dir)
    cr = pipe.cfg.stages.critique_revise
    templates = {
        "propose": load_template(pdir, "discover/propose", proposal.VARIABLES),
        "critique_request": load_template(pdir, "discover/critique_request", {"principle"}),
        "revision_request": load_template(pdir, "discover/revision_request", {"principle"}),
        "critique": load_template(pdir, cr.critique_template if cr else "critique", CRITIQUE_VARIABLES),
        "no_change": load_template(pdir, "discover/no_change", {"prompt", "response", "principle"}),
        "judge": template_for(pdir, jcfg),
    }
    work = work or ROOT / "outputs" / f"discover-{name}"
    return Plan(prefs, out, name, work, s, pairs, train, held, seeds, untestable, pipe, jcfg, templates)


def _chars(messages: list) -> int:
    return sum(len(m["content"]) for m in messages)


def estimate(p: Plan) -> list[Line]:
    """Upper bounds: every candidate slot filled, every candidate kept and written, outputs at max_tokens.
    Inputs are counted from the real rendered prompts of the sampled and held-out pairs. Not counted:
    fresh samples of replies that do not parse (at most `retries.parse_attempts` per call)."""
    s, t, model = p.settings, p.templates, p.pipe.cfg.model
    sampled = proposal.sample(p.train, s.proposal_pairs, s.seed)
    prop_in = sum(estimate_tokens(_chars(t["propose"].render(prompt=x.prompt, preferred=x.chosen, other=x.rejected,
                                                             n=s.per_pair))) for x in sampled)
    candidates = (s.max_candidates if s.proposal_pairs else 0) + len(p.seeds)
    principle = _placeholder_principle()
    per_pair = [estimate_tokens(_chars(t["judge"].render(prompt=x.prompt, principle=principle, a=x.chosen,
                                                         b=x.rejected, response=x.chosen))) for x in p.held]
    per = 2 * p.judge_cfg.samples  # two orders (or, scoring, two answers), each up to `samples` verdicts
    judge_calls = candidates * len(p.held) * per
    x = p.held[0]
    request_in = estimate_tokens(_chars(t["critique_request"].render(principle=principle.judge)))
    example_in = estimate_tokens(_chars(t["critique"].render(prompt=x.prompt, response=x.rejected,
                                                             principle=principle, examples=[])))
    proposed = s.max_candidates if s.proposal_pairs else 0
    lines = [Line("propose", model, len(sampled), prop_in, len(sampled) * PROPOSE_MAX_TOKENS),
             Line("test (judge)", model, judge_calls, candidates * sum(per_pair) * per,
                  judge_calls * p.judge_cfg.max_tokens),
             Line("write", model, 2 * proposed + candidates + 1, 2 * proposed * request_in + (candidates + 1) * example_in,
                  2 * proposed * REQUEST_MAX_TOKENS + (candidates + 1) * EXAMPLE_MAX_TOKENS)]
    spec = ModelSpec.parse(model)
    for line in lines:
        line.usd = p.pipe.prices.cost(spec.provider, spec.name, line.input_tokens, line.output_tokens)
    return lines


def _placeholder_principle() -> Principle:
    """A principle of typical length, for counting tokens before any is proposed."""
    text = "Choose the answer that " + " ".join(["word"] * 16) + "."
    return Principle(id="placeholder", critique=text, revision=text, judge=text)


def candidates_from(clusters: list[proposal.Cluster], seeds: list[Candidate], limit: int) -> list[Candidate]:
    taken = {c.id for c in seeds}
    seed_texts = {c.judge.strip().lower() for c in seeds}
    out = []
    for cl in clusters:
        if len(out) == limit:
            break
        if cl.text.strip().lower() in seed_texts:
            continue  # the seed constitution already has it, tested as a seed
        out.append(Candidate(id=slug(cl.text, taken, f"p{len(taken) + 1:02d}"), judge=cl.text, origin="proposed",
                             support=cl.support, wordings=cl.members))
    return seeds + out


async def _work(p: Plan, log: CallLog, stats: Stats) -> tuple[list[Result], tuple, list[list[str]]]:
    s, t, model = p.settings, p.templates, p.pipe.cfg.model
    caller = p.pipe.caller(log, stats, Budget(p.pipe.cfg.max_cost))
    try:
        proposed: list[list[str]] = []
        if s.proposal_pairs:
            sampled = proposal.sample(p.train, s.proposal_pairs, s.seed)
            proposed = await proposal.propose(sampled, caller, t["propose"], model, per_pair=s.per_pair, seed=s.seed,
                                              temperature=s.temperature, max_tokens=PROPOSE_MAX_TOKENS)
        clusters = proposal.cluster(proposed)
        stats["propose"].counters["clusters"] = len(clusters)
        if len(clusters) > s.max_candidates:
            stats["propose"].drop("beyond_max_candidates", len(clusters) - s.max_candidates)
        candidates = candidates_from(clusters, p.seeds, s.max_candidates)
        judged = await judge_all(candidates, p.held, caller, p.judge_cfg, t["judge"], model, s.seed)
        results = decide([measure(c, recs, s.decisive) for c, recs in zip(candidates, judged)], s.margin)
        kept = [r for r in results if r.status == "kept"]
        written = await write_principles(kept, p.held, caller, t, model, s.seed, s.temperature)
        return results, written, proposed
    finally:
        await p.pipe.aclose()


def run(p: Plan, console: Console) -> dict:
    """Propose, test, write. Returns the summary (also in WORK/discover.json)."""
    s = p.settings
    p.work.mkdir(parents=True, exist_ok=True)
    p.pipe.load_models()
    stats = Stats(["propose", "judge", "write"])
    log = CallLog(p.work / "calls.sqlite")
    try:
        results, (principles, examples, written), proposed = asyncio.run(_work(p, log, stats))
    except BudgetExceeded as e:
        raise StoppedAtBudget(f"{e}; nothing written. Every call made is cached in {p.work}: rerun with a larger "
                         "--max-cost (and the same --work) to continue") from None
    except ModelCallError as e:  # fatal: a rejected key, an unknown model
        raise FactoryError(str(e)) from None
    finally:
        log.close()
    report = p.work / "report.html"
    summary = {
        "name": p.name, "prefs": str(p.prefs), "model": p.pipe.cfg.model, "finished": now(),
        "pairs": len(p.pairs), "proposal_pairs": len(proposed), "heldout_pairs": len(p.held),
        "heldout_prompts": len({x.prompt_id for x in p.held}), "candidates": len(results),
        "kept": sum(r.status == "kept" for r in results), "written": len(principles),
        "margin": s.margin, "decisive": s.decisive, "untestable_seed_principles": p.untestable,
        "constitution": str(p.out) if principles else None, "report": str(report),
        "calls": sum(x.calls for x in stats.stages.values()),
        "cached_calls": sum(x.cached_calls for x in stats.stages.values()),
        "cost_usd": round(sum(x.cost for x in stats.stages.values()), 6),
        "dropped": {k: dict(v.dropped) for k, v in stats.stages.items() if v.dropped},
        "settings": s.model_dump(mode="json"),
    }
    if principles:
        header = [f"Discovered by `factory constitution discover` from {p.prefs.name} on {summary['finished']} "
                  f"with {p.pipe.cfg.model}.",
                  f"{len(p.pairs)} pairs; {len(proposed)} explained by the model; each principle tested alone as the "
                  f"judge on {len(p.held)} held-out pairs",
                  f"over {summary['heldout_prompts']} prompts, both orders. Agreement = mean P(chosen better); chance "
                  f"is 0.5. Kept: agreement >= {0.5 + s.margin:.2f} and 95% CI above 0.5.",
                  f"Full table and example pairs: {report}"]
        description = (f"Principles that explain the preferences in {p.prefs.name}, ranked by held-out agreement. "
                       "Each was kept because a judge using it alone reproduced the held-out choices above chance.")
        write_atomic(p.out, constitution_yaml(p.name, description, principles, examples, written, header))
    write_json(p.work / "discover.json", summary | {"principles": [r.to_dict() for r in results],
                                                    "stats": stats.to_dict()})
    write_atomic(report, report_html(summary, results, p.held))
    console.print(results_table(results), soft_wrap=True)
    return summary


def results_table(results: list[Result]) -> Table:
    table = Table(title="Principles tested on held-out pairs (chance = 0.5)")
    for col in ("#", "id", "status", "agreement", "95% CI", "coverage", "acc. decisive", "support"):
        table.add_column(col, justify="left" if col in ("id", "status") else "right")
    for i, r in enumerate(results, 1):
        acc = "-" if r.accuracy_decisive is None else f"{r.accuracy_decisive:.2f}"
        status = r.status + (f" ({r.merged_into})" if r.merged_into else "")
        table.add_row(str(i), r.candidate.id, status, f"{r.agreement:.3f}", f"{r.ci95[0]:.3f}-{r.ci95[1]:.3f}",
                      f"{r.coverage:.2f}", acc, str(r.candidate.support or "-"))
    return table


def dry_run_table(p: Plan) -> Table:
    return estimate_table(estimate(p), batch=False, parse_attempts=p.pipe.cfg.retries.parse_attempts)
