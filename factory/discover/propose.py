"""Proposal: the model explains sampled choices as candidate principles; near-duplicates merge.

Each sampled proposal pair is shown with its preferred and other answer; the reply is read as one
principle per line ("Choose the answer that ..."). Lines that are not principles are dropped and
counted; a reply with none is sampled afresh (the caller's parse retries), then counted as
unreadable. Near-duplicate texts are clustered with the project's MinHash LSH (rensa) over word
bigrams of the principle after its common opening, at Jaccard 0.6: principles are one short
sentence, so 5-gram shingles (the dataset default) would almost never match. Each cluster keeps its
most proposed wording, and the number of pairs that proposed any member is its support.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass, field

from factory.discover.prefs import PrefPair
from factory.engine.caller import Caller, ParseError, ParseFailure, derive_seed, rng
from factory.errors import ModelCallError
from factory.hygiene.dedup import NearDedup, normalise_text
from factory.models import GenParams
from factory.prompts import Template

VARIABLES = {"prompt", "preferred", "other", "n"}
OPENING = re.compile(r"^(?:choose|prefer|pick|select)\s+the\s+(?:answer|response|one)\s+(?:that|which)\s+", re.I)
BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)]|principle\s*\d*\s*:)?\s*[\"']?", re.I)
MIN_WORDS, MAX_CHARS = 2, 300
CLUSTERING = NearDedup(ngram=2, threshold=0.6)


@dataclass
class Cluster:
    text: str  # the most proposed wording
    support: int  # distinct proposal pairs that proposed any member
    members: list[str] = field(default_factory=list)  # every distinct wording, most proposed first


def principles_in(text: str, opening: str = "") -> list[str]:
    """The principle lines of a reply. `opening` is a prefill the backend continued: the first
    line is its continuation. Raises ParseError when there is none."""
    if opening and not OPENING.match(BULLET.sub("", text.lstrip(), count=1)):
        text = f"{opening} {text.lstrip()}"
    found: list[str] = []
    for line in text.splitlines():
        line = BULLET.sub("", line, count=1).strip().strip("\"'").strip()
        m = OPENING.match(line)
        rest = line[m.end():] if m else ""
        if not rest[:1].isalpha() or len(line) > MAX_CHARS or len(rest.split()) < MIN_WORDS:
            continue
        line = "Choose the answer that " + rest.rstrip()
        if not line.endswith((".", "!", "?")):
            line += "."
        if line not in found:
            found.append(line)
    if not found:
        raise ParseError("no line starts with 'Choose the answer that'")
    return found


def sample(pairs: list[PrefPair], n: int, seed: int) -> list[PrefPair]:
    """A seeded sample of n proposal pairs, spread over prompts (one pair per prompt first)."""
    by_prompt: dict[str, list[PrefPair]] = {}
    for p in rng(seed, "discover", "sample").sample(pairs, len(pairs)):
        by_prompt.setdefault(p.prompt_id, []).append(p)
    rounds = max((len(v) for v in by_prompt.values()), default=0)
    ordered = [group[r] for r in range(rounds) for group in by_prompt.values() if r < len(group)]
    return ordered[:n]


async def propose(pairs: list[PrefPair], caller: Caller, template: Template, model: str, *, per_pair: int,
                  seed: int, temperature: float, max_tokens: int) -> list[list[str]]:
    """The principles proposed for each pair (an empty list where the reply never parsed or the call
    failed; `caller.stats['propose']` counts why)."""
    st = caller.stats["propose"]
    prefill = template.prefill if template.prefill and caller.endpoints[model].model.prefill else ""

    async def one(p: PrefPair) -> list[str]:
        variables = {"prompt": p.prompt, "preferred": p.chosen, "other": p.rejected, "n": per_pair}
        params = GenParams(temperature=temperature, max_tokens=max_tokens, seed=derive_seed(seed, p.where, "propose"))
        st.records_in += 1
        try:
            found, _, _ = await caller.chat_parsed("propose", p.where, template, variables, model, params,
                                                   lambda text: principles_in(text, prefill))
        except ParseFailure:
            st.drop("no_principle_in_reply")
            return []
        except ModelCallError as e:
            if e.fatal:
                raise
            st.drop("call_failed")
            return []
        st.records_out += 1
        st.counters["principles_proposed"] += len(found[:per_pair])
        return found[:per_pair]

    return list(await asyncio.gather(*(one(p) for p in pairs)))


def cluster(proposed: list[list[str]]) -> list[Cluster]:
    """Near-duplicate principles merged; clusters ordered by support (then first appearance)."""
    counts: Counter[str] = Counter()
    supporters: dict[str, set[int]] = {}
    for i, texts in enumerate(proposed):
        for t in texts:
            counts[t] += 1
            supporters.setdefault(t, set()).add(i)
    texts = list(counts)  # distinct wordings, in order of first appearance
    keys = [normalise_text(OPENING.sub("", t)) for t in texts]
    roots = [i if d is None else d for i, d in enumerate(CLUSTERING.duplicates(keys))]
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(roots):
        groups.setdefault(r, []).append(i)
    out = []
    for members in groups.values():
        ranked = sorted(members, key=lambda i: (-counts[texts[i]], i))
        support = len(set().union(*(supporters[texts[i]] for i in members)))
        out.append(Cluster(texts[ranked[0]], support, [texts[i] for i in ranked]))
    return sorted(out, key=lambda c: -c.support)  # stable: first appearance breaks ties
