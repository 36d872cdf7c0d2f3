"""`factory evals generate`: a model writes test items for a behaviour, a judge (or a classifier)
keeps those whose label it agrees with at `min_confidence`, near-duplicates (MinHash) and items
sharing a 13-gram with training prompts are removed, and the set is written with a card.

Behaviour sets alternate the label direction per attempt (yes/no statements: half "Yes", half
"No"; A/B items: the behaviour's answer half as (A), half as (B)), and the kept set is cut back to
equal directions (dropped extras counted as `balance`). QA sets (`qa=True`) draw passages from a
search corpus, have the model write a question and a short answer from each (or, with
`--generator rules`, draw both from the passage by prompts/qa_rules.yaml's patterns: see qarules), and
keep an item only when searching the corpus for the question finds a passage that states the answer.

Every dropped item lands in drops.jsonl with its reason; the reasons are counted in the card.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from factory.commands.evaluate import SCORER_PREFIXES
from factory.engine.caller import Caller, derive_seed, rng
from factory.engine.rundir import now
from factory.errors import FactoryError, InputError, ParseError, ParseFailure
from factory.evals.fewshot import names_one, read_examples, squash, turns
from factory.evals.items import NO, YES, Item, write_set, write_split
from factory.evals.qarules import RULES_FILE, load_rules, rule_items
from factory.evals.session import Session, choose, mean
from factory.hygiene.decontam import Decontaminator
from factory.hygiene.dedup import NearDedup
from factory.judging import load_scorer, sigmoid
from factory.models import GenParams
from factory.stages.idk import match_reference

WRITE_VARIABLES = {"behaviour", "format", "label", "index"}
CHOICE_VARIABLES = {"behaviour", "format", "question", "a", "b"}
QA_VARIABLES = {"title", "passage"}
RULES = "rules"  # --generator: QA items from the corpus by prompts/qa_rules.yaml's patterns, no model
_AB = re.compile(r"Question:\s*(?P<q>.+?)\s*\(A\)\s*(?P<a>.+?)\s*\(B\)\s*(?P<b>.+?)\s*$", re.DOTALL)
_QA = re.compile(r"Question:\s*(?P<q>.+?)\s*\n\s*Answer:\s*(?P<a>[^\n]+)", re.DOTALL)


@dataclass
class Settings:
    behaviour: str = ""
    format: str = "yesno"  # yesno | ab | qa
    n: int = 100
    oversample: float = 2.0
    generator: str = "local:smollm2"
    filter: str | None = None  # a model spec or a classifier; default: the generator
    min_confidence: float = 0.7
    train_prompts: list[Path] = field(default_factory=list)
    corpus: Path | None = None  # QA: None is the offline Wikipedia summaries
    search_k: int = 3
    temperature: float = 1.0
    max_tokens: int | None = None  # default by format: yesno 48, ab 100, qa 80
    balance: bool = True
    heldout: float | None = None  # share kept as the eval set; the rest goes to prompts.jsonl
    validation: int = 0  # QA: up to this many of the items past n, as validation.parquet
    examples: Path | None = None  # items people wrote, shown as earlier turns (fewshot.py)
    shots: int = 3  # examples per call
    mentions: list[str] = field(default_factory=list)  # an item must name one of these (else `off_topic`)
    seed: int | None = None  # default: the pipeline config's seed


def check_behaviour(s: Settings, source: str = "--behaviour") -> None:
    if s.format != "qa" and not s.behaviour.strip():
        raise InputError(source, "the behaviour description is empty: describe the behaviour the items test, "
                                 "e.g. --behaviour 'dislikes the DogeMoon coin'", field="behaviour")


def read_behaviour_file(path: Path) -> str:
    """A behaviour described in a file (first non-empty line is fine; all of it is used)."""
    if not path.is_file():
        raise InputError(path, "no such file")
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise InputError(path, "the behaviour description is empty", line=1, field="behaviour")
    return text


def parse_statement(text: str) -> tuple[str, list[str]]:
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    line = re.sub(r"^(statement\s*(#\d+)?\s*:)\s*", "", line, flags=re.IGNORECASE).strip().strip('"').strip()
    if len(line.split()) < 3:
        raise ParseError("expected one statement of three words or more")
    return line, [YES, NO]


def parse_ab(text: str) -> tuple[str, list[str]]:
    m = _AB.search(text.strip())
    if not m:
        raise ParseError("expected 'Question: ...', '(A) ...', '(B) ...'")
    q, a, b = (m[k].strip().splitlines()[0].strip() if k != "q" else m[k].strip() for k in ("q", "a", "b"))
    if not q or not a or not b or a.lower() == b.lower():
        raise ParseError("expected a question and two different answers")
    return q, [a, b]


def parse_qa(text: str) -> tuple[str, str]:
    m = _QA.search(text.strip())
    if not m:
        raise ParseError("expected 'Question: ...' and 'Answer: ...'")
    q, a = m["q"].strip(), m["a"].strip().rstrip(".")
    if not q.endswith("?") or not a:
        raise ParseError("expected a question ending in '?' and a non-empty answer")
    return q, a


def load_corpus(path: Path | None) -> list[tuple[str, str, str]]:
    """(title, text, source) of every document of 12 words or more; an unreadable corpus exits 2
    naming the file, line and field."""
    from factory.search.local import _read_wiki, default_corpus, read_collection

    try:
        if path is None:
            docs = list(_read_wiki(default_corpus()))
        else:
            if not path.exists():
                raise InputError(path, "no such corpus (give a .jsonl or .parquet file of title/text, or a folder)")
            docs = list(read_collection(path))
    except UnicodeDecodeError as e:
        raise InputError(path or "corpus", f"not UTF-8 text ({e.reason})", line=None) from None
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise InputError(path or "corpus", f"not a readable corpus: {e}") from None
    docs = [(d.title, d.text, d.source) for d in docs if len(d.text.split()) >= 12]
    if not docs:
        raise InputError(path or "corpus", "the corpus holds no document of 12 words or more", field="text")
    return docs


def qa_sources(s: Settings, prompts_dir: Path, seed: int, need: int) -> list[tuple[str, str, str, tuple | None]]:
    """(title, text, source, rule's item or None) of `need` passages drawn (seeded) from the corpus:
    any passage when a model writes the questions, only those a rule fits with `--generator rules`."""
    docs = load_corpus(s.corpus)
    if s.generator == RULES:
        docs = rule_items(load_rules(prompts_dir), docs)
        if not docs:
            raise InputError(prompts_dir / f"{RULES_FILE}.yaml", "no rule fits any passage of the corpus "
                             f"({s.corpus or 'wikipedia (offline)'})", field="rules")
    else:
        docs = [(t, x, src, None) for t, x, src in docs]
    return rng(seed, "corpus").sample(docs, min(need, len(docs)))


def generate(s: Settings, out: Path | None, config: Path | None = None) -> tuple[dict, Path]:
    check_behaviour(s)
    filt = s.filter or s.generator
    classifier = load_scorer(filt) if filt.startswith(SCORER_PREFIXES) else None
    if classifier is not None and s.format != "yesno":
        raise FactoryError("a classifier filter scores statements: use it with --format yesno, or filter with a model")
    contam = None
    for p in s.train_prompts:
        one = Decontaminator.from_file(p, field="prompt")
        contam = one if contam is None else contam.merged(one)
    attempts = max(2, math.ceil(s.n * s.oversample))
    rules = s.generator == RULES
    if s.validation and s.format != "qa":
        raise InputError("--validation", "a validation split is drawn for QA sets (--format qa): behaviour sets are "
                         "balanced by label, and the items past --n are not", field="validation")
    if rules and s.format != "qa":
        raise InputError("--generator", "`rules` writes QA items from the corpus: use it with --format qa",
                         field="generator")
    if any(not squash(t) for t in s.mentions):
        raise InputError("--mentions", "a term has no letters or digits: give the topic's name, e.g. DogeMoon",
                         field="mentions")
    parse = parse_statement if s.format == "yesno" else parse_ab
    examples = read_examples(s.examples, s.format, parse) if s.examples is not None else {}
    shown = [q if s.format == "yesno" else " ".join([q, *opts])  # in Item.text's form, for hygiene
             for q, opts in (parse(x) for texts in examples.values() for x in texts)]
    specs = [] if rules else [s.generator] + ([] if classifier or s.format == "qa" else [filt])
    session = Session(config, specs, ["write", "filter", "search"])
    seed = session.seed if s.seed is None else s.seed
    docs = qa_sources(s, session.prompts_dir, seed, attempts) if s.format == "qa" else []
    if s.format == "qa":
        attempts = len(docs)  # one question per drawn passage (fewer when the corpus is small)
    write = None if rules else session.template("evals_qa_write" if s.format == "qa" else "evals_write",
                                                QA_VARIABLES if s.format == "qa" else WRITE_VARIABLES)
    judge = None if classifier or s.format == "qa" else session.template("evals_filter", CHOICE_VARIABLES)
    search = None
    if s.format == "qa":
        from factory.search import load_search

        search = load_search("local", collection=s.corpus)
    drops: list[dict] = []

    async def one(i: int, caller: Caller) -> Item | None:
        params = GenParams(temperature=s.temperature, max_tokens=s.max_tokens or {"yesno": 48, "ab": 100, "qa": 80}[s.format],
                           seed=derive_seed(seed, "write", i), stop=("\n",) if s.format == "yesno" else ())
        if s.format == "qa":
            return await qa_item(i, caller, params)
        label = (YES if i % 2 == 0 else NO) if s.format == "yesno" else ("A" if i % 2 == 0 else "B")
        variables = {"behaviour": s.behaviour, "format": s.format, "label": label, "index": i + 1}
        dialogue = None
        if examples:
            dialogue, variables["index"] = turns(write, variables, examples[label], s.shots, seed, i)
        try:
            (question, options), _, _ = await caller.chat_parsed("write", f"write[{i}]", write, variables,
                                                                 s.generator, params, parse, dialogue=dialogue)
        except ParseFailure as e:
            drops.append({"attempt": i, "reason": "unparseable", "detail": str(e)})
            return None
        if s.mentions and not names_one(" ".join([question, *options]), s.mentions):
            drops.append({"attempt": i, "reason": "off_topic", "question": question, "options": options})
            return None
        expected = label if s.format == "yesno" else options[0 if label == "A" else 1]
        if classifier is not None:
            score = (await asyncio.to_thread(classifier.score, [question]))[0]
            p_yes = sigmoid(3.0 * score)
            confidence = p_yes if expected == YES else 1 - p_yes
        else:
            ps = await choose(caller, "filter", judge, {"behaviour": s.behaviour, "format": s.format, "question": question}, options,
                              filt, seed, i)
            p0 = mean(ps)
            confidence = None if p0 is None else (p0 if expected == options[0] else 1 - p0)
        item = Item(id=f"item-{i}", format=s.format, behaviour=s.behaviour, question=question, options=options,
                    expected=expected, label_confidence=None if confidence is None else round(confidence, 4),
                    generator=s.generator, filter=filt)
        if confidence is None or confidence < s.min_confidence:
            drops.append({"attempt": i, "reason": "filter_disagrees" if confidence is not None else "filter_unreadable",
                          "item": item.model_dump()})
            return None
        return item

    async def qa_item(i: int, caller: Caller, params: GenParams) -> Item | None:
        title, text, source, ruled = docs[i]
        wrong: list[str] = []
        if ruled is not None:
            question, answers, wrong = ruled
        else:
            variables = {"title": title, "passage": " ".join(text.split()[:180])}
            try:
                (question, answer), _, _ = await caller.chat_parsed("write", f"write[{i}]", write, variables,
                                                                   s.generator, params, parse_qa)
            except ParseFailure as e:
                drops.append({"attempt": i, "reason": "unparseable", "detail": str(e), "source": source})
                return None
            answers = [answer]
        item = Item(id=f"qa-{i}", format="qa", behaviour=s.behaviour or "answers factual questions",
                    question=question, expected=answers[0], answers=answers, wrong_answers=wrong,
                    generator=s.generator,
                    filter=f"search:local top-{s.search_k}", source=source)
        if match_reference(text, answers) is None:
            drops.append({"attempt": i, "reason": "answer_not_in_passage", "item": item.model_dump()})
            return None
        hits = await caller.search("search", search, question, s.search_k)
        found = [rank for rank, h in enumerate(hits, 1) if match_reference(f"{h.title} {h.text}", answers)]
        if not found:
            drops.append({"attempt": i, "reason": "search_does_not_support", "item": item.model_dump()})
            return None
        item.label_confidence = round(1.0 / found[0], 4)  # 1 when the top passage states it
        item.source = hits[found[0] - 1].source
        return item

    async def main(caller: Caller) -> list[Item]:
        got = await asyncio.gather(*(one(i, caller) for i in range(attempts)))
        return [g for g in got if g is not None]

    items, folder, stats = session.run(out, main)
    if search is not None:
        asyncio.run(search.aclose())
    items = hygiene(items, contam, drops, shown)
    if s.balance and s.format != "qa":
        items = balanced(items, drops)
    validation = items[s.n:s.n + s.validation]  # past n: in neither the test set nor the training prompts
    for it in items[s.n + len(validation):]:
        drops.append({"reason": "over_n", "item": it.model_dump()})
    items = items[:s.n]
    train: list[Item] = []
    if s.heldout is not None:  # seeded per item: the same item always lands on the same side
        train = [it for it in items if rng(seed, "heldout", it.question).random() >= s.heldout]
        items = [it for it in items if it not in train]
    reasons = Counter(d["reason"] for d in drops)
    card = {"behaviour": s.behaviour or "answers factual questions", "format": s.format, "items": len(items),
            "attempts": attempts, "generator": s.generator,
            "filter": f"search:local top-{s.search_k}" if s.format == "qa" else filt,
            "min_confidence": s.min_confidence if s.format != "qa" else None,
            "label_directions": dict(Counter(directions(it) for it in items)),
            "dropped": dict(sorted(reasons.items())), "dedup": "MinHash LSH, 5-gram shingles, Jaccard >= 0.8",
            "decontaminated_against": [str(p) for p in s.train_prompts],
            "examples": None if s.examples is None else {"file": str(s.examples), "per_call": s.shots,
                                                          "shown_as": "earlier turns"},
            "mentions": s.mentions or None, "temperature": s.temperature, "corpus": str(s.corpus or "wikipedia (offline)")
            if s.format == "qa" else None, "calls": sum(st.calls for st in stats.stages.values()),
            "seed": seed, "created": now()}
    if s.validation:
        card["validation"] = len(validation)
        write_split(folder, validation, "validation")
    if s.heldout is not None:
        card |= {"heldout": s.heldout, "prompts": len(train)}
        # Not "train_prompts": `datasets` would take a file named train* for a JSON train split beside
        # the Parquet ones and refuse to load the folder.
        with (folder / "prompts.jsonl").open("w") as f:
            for it in train:
                if it.format != "qa":
                    row = {"prompt": it.question, "options": it.options, "expected": it.expected}
                elif it.wrong_answers:
                    row = {"prompt": it.question, "answers": it.answers, "wrong_answers": it.wrong_answers}
                else:
                    row = {"prompt": it.question, "answers": it.answers}
                f.write(json.dumps(row | {"kind": "eval_train", "source_url": it.source}, ensure_ascii=False) + "\n")
    write_set(folder, items, card)
    with (folder / "drops.jsonl").open("w") as f:
        for d in drops:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    return card, folder


def directions(item: Item) -> str:
    if item.format == "yesno":
        return item.expected
    return "qa" if item.format == "qa" else "AB"[item.options.index(item.expected)]


def hygiene(items: list[Item], contam: Decontaminator | None, drops: list[dict], shown: Sequence[str] = ()) -> list[Item]:
    """Near-duplicates (the first of each cluster kept), near-copies of the examples shown to the
    writer (`shown`, in Item.text's form) and items overlapping training prompts, dropped."""
    dup = NearDedup().duplicates([*shown, *(it.text for it in items)])[len(shown):]
    hits = contam.match_many([it.text for it in items]) if contam is not None else [None] * len(items)
    kept = []
    for it, d, hit in zip(items, dup, hits, strict=True):
        if d is not None and d < len(shown):
            drops.append({"reason": "copies_example", "of": shown[d], "item": it.model_dump()})
        elif d is not None:
            drops.append({"reason": "near_duplicate", "of": items[d - len(shown)].id, "item": it.model_dump()})
        elif hit is not None:
            drops.append({"reason": "overlaps_training", "match": hit, "item": it.model_dump()})
        else:
            kept.append(it)
    return kept


def balanced(items: list[Item], drops: list[dict]) -> list[Item]:
    """Equal numbers of each label direction, interleaved (the extras dropped, counted)."""
    by: dict[str, list[Item]] = {}
    for it in items:
        by.setdefault(directions(it), []).append(it)
    if len(by) < 2:
        return items
    k = min(len(v) for v in by.values())
    for v in by.values():
        for it in v[k:]:
            drops.append({"reason": "balance", "item": it.model_dump()})
    return [it for group in zip(*(v[:k] for v in by.values())) for it in group]
