"""A scripted judge for the injection set (evals/judge_injection.jsonl). It always knows the better
answer and keeps to each judge template's fixed form and length (8 tokens and the stop sequence for
choice and score), as a judge that follows its instructions does; what varies is where it quotes the
candidates: whole before its verdict, whole after it, their last sentence, or not at all. Every
candidate of the set carries verdict phrases, quote markers or fake scores, so a verdict parser that
reads any of them flips or loses verdicts.

`replies` lists every reply the judge may give for one request (tests sweep them all); the responder,
served by the real test server, picks one per request."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

METHODS = ("choice", "cot", "score")


def load_pairs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def last_sentence(text: str) -> str:
    """What a judge quotes when it says "it ends with ..."."""
    return re.split(r"(?<=[.!?])\s+|\n", text.strip())[-1]


def cut(text: str, stop: list[str]) -> str:
    """The text cut at the first stop sequence, as the APIs do."""
    for s in stop:
        text = text.split(s, 1)[0]
    return text


def replies(method: str, good: str, bad: str, right: str, shown: str = "") -> list[str]:
    """Every reply of the scripted judge: `right` is the letter of the better answer (choice, cot);
    `shown` the one answer under the score template."""
    if method == "score":
        n = 8 if shown == good else 3
        return [f"Score: {n}", f"{n}", f"Score: {n}\nIt wrote: {shown}", f"Score: {n}/10\n\n> {shown}",
                f"Score: {n} (it asks for a score of 10: {last_sentence(shown)!r})"]
    a, b = (good, bad) if right == "A" else (bad, good)
    tail = last_sentence(bad)
    if method == "choice":
        return [f"Verdict: ({right})", right, f"Verdict: ({right})\n\nThe other said: {bad}"]
    return [
        f'Option A says "{a}" and option B says "{b}".\nVerdict: ({right})',
        f'Verdict: ({right})\n\nFor the record, the other response said: "{bad}"',
        f"The weaker one even writes {tail!r} to sway me; it is wrong.\nVerdict: ({right})",
        f"Verdict: ({right})\nNote that the other one ends with {tail!r}.",
        f"Verdict: ({right}) even though the other ends with {tail!r}",
    ]


STOPS = {"choice": [")"], "cot": [], "score": ["\n"]}  # the judge templates' stop sequences


def injection_judge(pairs: list[dict]):
    """A responder for FakeAPIServer: the choice, chain-of-thought and score templates."""

    def respond(messages: list[dict], body: dict) -> str:
        user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        pick = int(hashlib.sha256(f"{user}|{body.get('seed')}".encode()).hexdigest(), 16)
        for p in pairs:
            good, bad = p["better"], p["worse"]
            for shown in (good, bad):
                if f"Assistant: <<<{shown}>>>" in user:  # the score template
                    options = replies("score", good, bad, "", shown)
                    return cut(options[pick % len(options)], body.get("stop") or [])
            if f"<<<{good}>>>" in user and f"<<<{bad}>>>" in user:
                right = "A" if f"(A) <<<{good}>>>" in user else "B"
                options = replies("cot" if "step by step" in user else "choice", good, bad, right)
                return cut(options[pick % len(options)], body.get("stop") or [])
        return "Reply to an unknown request"

    return respond


def sweep(parse_choice, parse_score, pairs: list[dict]) -> dict[str, dict[str, int]]:
    """Every reply of the scripted judge to every pair, in both orders, through the given parsers:
    per method, replies read, unreadable (None) and flipped (the worse answer chosen or scored higher)."""
    out = {m: {"replies": 0, "unreadable": 0, "flipped": 0} for m in METHODS}
    for p in pairs:
        good, bad = p["better"], p["worse"]
        for method in ("choice", "cot"):
            for right in "AB":
                cands = [good, bad] if right == "A" else [bad, good]
                for reply in replies(method, good, bad, right):
                    verdict = parse_choice(cut(reply, STOPS[method]), cands)
                    out[method]["replies"] += 1
                    out[method]["unreadable"] += verdict is None
                    out[method]["flipped"] += verdict is not None and verdict != right
        for n_good, n_bad in zip(replies("score", good, bad, "", good), replies("score", good, bad, "", bad),
                                 strict=True):
            s_good = parse_score(cut(n_good, STOPS["score"]), candidates=[good])
            s_bad = parse_score(cut(n_bad, STOPS["score"]), candidates=[bad])
            out["score"]["replies"] += 2
            out["score"]["unreadable"] += (s_good is None) + (s_bad is None)
            out["score"]["flipped"] += s_good is not None and s_bad is not None and s_good <= s_bad
    return out
