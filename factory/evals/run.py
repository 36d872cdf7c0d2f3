"""`factory eval --set`: run a model-written (or hand-written) eval set against one or more models.

Behaviour sets (yesno, ab): each model answers every item in both option orders (first-token A/B
log-probs, else the parsed letter); an order counts 1 when the model's answer is the expected one,
0 when not, 0.5 when unreadable or exactly even. The behaviour-match rate's 95% interval is
clustered by item (both orders of an item resampled together; `evaluate.clustered_interval`).

QA sets: K sampled short answers per question, each correct (it names a reference answer, SQuAD
normalisation), a decline ("I don't know" and the phrasings of prompts/idk_declines.yaml), or wrong.
Accuracy, decline rate and wrong-answer rate per model, clustered by question. With calibration on,
each model is also asked P(IK) before answering and P(True) of its first sample (calibration.py).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import defaultdict
from pathlib import Path

from factory.commands.evaluate import clustered_interval, outcome
from factory.engine.caller import Caller, derive_seed
from factory.engine.rundir import now, write_json
from factory.evals.calibration import calibration
from factory.evals.items import NO, YES, Item, read_set
from factory.evals.session import Session, choose, mean
from factory.hygiene.clean import REFUSAL
from factory.models import GenParams
from factory.stages.idk import load_declines, match_reference, normalise_answer

ANSWER_VARIABLES = {"format", "question", "a", "b"}
IDK = re.compile(r"\b(i (?:do not|don'?t) know|not sure|no idea|i'?m unsure|i am unsure|(?:can ?not|can'?t) "
                 r"(?:answer|say|tell)|unknown to me)\b", re.IGNORECASE)


def rate(groups: list[list[float]]) -> dict:
    flat = [x for g in groups for x in g]
    return {"rate": round(sum(flat) / len(flat), 4) if flat else None, "ci95": clustered_interval(groups),
            "n": len(flat), "items": len(groups)}


class Decliner:
    """Is an answer a decline? The refusal openings, common "I don't know" words, or one of the
    IDK stage's decline phrasings contained in it."""

    def __init__(self, declines: list[str]):
        self.declines = [normalise_answer(d) for d in declines]

    def __call__(self, text: str) -> bool:
        norm = normalise_answer(text)
        return bool(REFUSAL.match(text) or IDK.search(text) or any(d and d in norm for d in self.declines))


def run_set(source: Path, models: list[str], out: Path | None, *, config: Path | None = None, samples: int = 5,
            calibrate: bool = True, limit: int | None = None, temperature: float = 0.7,
            split: str = "test") -> tuple[dict, Path]:
    items = read_set(source, split)[:limit]
    models = list(dict.fromkeys(models))  # a model given as both --model and --baseline is measured once
    session = Session(config, models, ["answer", "pik", "ptrue"])
    seed = session.seed
    choice = session.template("evals_answer", ANSWER_VARIABLES)
    qa = any(it.format == "qa" for it in items)
    short = session.template("answer_short", {"prompt"}) if qa else None
    pik = session.template("evals_pik", {"question", "a", "b"}) if qa and calibrate else None
    ptrue = session.template("evals_ptrue", {"question", "answer", "a", "b"}) if qa and calibrate else None
    decline = Decliner(load_declines(session.prompts_dir, "idk_declines"))

    async def behaviour(it: Item, model: str, caller: Caller) -> dict:
        ps = await choose(caller, "answer", choice, {"format": it.format, "question": it.question}, it.options,
                          model, seed, it.id)
        first_expected = it.expected == it.options[0]
        p_exp = [None if p is None else (p if first_expected else 1 - p) for p in ps]
        return {"id": it.id, "model": model, "format": it.format, "p_expected": p_exp,
                "outcomes": [outcome(p) for p in p_exp]}

    async def question(it: Item, model: str, caller: Caller) -> dict:
        params = GenParams(temperature=temperature, max_tokens=48, seed=derive_seed(seed, "qa", it.id))
        outs = await asyncio.gather(*(caller.chat("answer", f"answer[{k}]", short, {"prompt": it.question}, model,
                                                  params, sample=k) for k in range(samples)))
        texts = [o.text.strip() for o, _ in outs]
        kinds = ["correct" if match_reference(t, it.answers, it.wrong_answers) else "decline" if decline(t)
                 else "wrong" for t in texts]
        row = {"id": it.id, "model": model, "format": "qa", "answers": texts, "kinds": kinds,
               "p_correct": round(kinds.count("correct") / len(kinds), 4)}
        if calibrate:
            p_ik, p_true = await asyncio.gather(
                choose(caller, "pik", pik, {"question": it.question}, [YES, NO], model, seed, it.id),
                choose(caller, "ptrue", ptrue, {"question": it.question, "answer": texts[0]}, ["True", "False"],
                       model, seed, it.id))
            row |= {"p_ik": mean(p_ik), "p_true": mean(p_true), "first_correct": float(kinds[0] == "correct")}
        return row

    async def main(caller: Caller) -> list[dict]:
        jobs = [(question if it.format == "qa" else behaviour)(it, m, caller) for m in models for it in items]
        return list(await asyncio.gather(*jobs))

    rows, folder, stats = session.run(out, main)
    report = {"set": str(source), "split": split, "items": len(items), "samples": samples if qa else None,
              "models": {m: summarise([r for r in rows if r["model"] == m], calibrate) for m in models},
              "calls": stats.to_dict(), "finished": now()}
    with (folder / "answers.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    write_json(folder / "eval.json", report)
    from factory.evals.html import write_eval_report

    write_eval_report(folder / "report.html", report)
    return report, folder


def summarise(rows: list[dict], calibrate: bool) -> dict:
    out: dict = {}
    beh = [r for r in rows if r["format"] != "qa"]
    if beh:
        out["behaviour_match"] = rate([r["outcomes"] for r in beh])
        by: dict[str, list] = defaultdict(list)
        for r in beh:
            by[r["format"]].append(r["outcomes"])
        out["by_format"] = {k: rate(v) for k, v in sorted(by.items())}
        out["unreadable_orders"] = sum(p is None for r in beh for p in r["p_expected"])
    qa = [r for r in rows if r["format"] == "qa"]
    if qa:
        for kind, name in (("correct", "accuracy"), ("decline", "decline_rate"), ("wrong", "wrong_answer_rate")):
            out[name] = rate([[float(k == kind) for k in r["kinds"]] for r in qa])
        if calibrate:
            out["calibration"] = {"p_ik": calibration([r["p_ik"] for r in qa], [r["p_correct"] for r in qa]),
                                  "p_true": calibration([r["p_true"] for r in qa], [r["first_correct"] for r in qa])}
    return out
