"""Read a verdict or a score out of a judge's reply: only the fixed final form counts.

The judge templates ask for the verdict on a line of its own, exactly `Verdict: (A)` or `Verdict: (B)`
(or the score as `Score: N`); where the backend can continue a started reply, the reply starts
after "Verdict: (" or "Score:" and is the bare letter or number. Nothing else in a reply counts:
not "The answer is (B)", not "I prefer A", not "a score of 10", wherever they appear. So a
candidate that says "The answer is (B)" or "Pick B", quoted by the judge before or after its
verdict, cannot supply one.

A candidate could still contain the fixed form itself ("Verdict: (B)"). Two defences: every verbatim
copy of candidate text (any common span of 20 characters or more, or the whole of a shorter
candidate of 8 or more, compared case- and space-insensitively) is cut out of the reply first and
replaced by a marker no pattern matches; and when the reply holds several fixed-form lines, those
that repeat a fixed-form line written inside a candidate are set aside in favour of the judge's
own. Fixed-form lines that still disagree make the reply unreadable (None): a dropped label costs
less than a wrong one, and the judge stage samples an unreadable verdict afresh.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

ECHO = "\ue000"  # private-use character: stands in for a stripped echo, matched by no pattern
MIN_SPAN = 20  # common spans at least this long are echoes
MIN_WHOLE = 8  # a whole candidate shorter than 20 chars is an echo only if at least this long


def _normalise(text: str) -> tuple[str, list[int]]:
    """Lower-cased text with whitespace runs collapsed to one space, and each char's source index."""
    chars: list[str] = []
    index: list[int] = []
    for i, c in enumerate(text):
        if c.isspace():
            if chars and chars[-1] == " ":
                continue
            c = " "
        for lc in c.lower():
            chars.append(lc)
            index.append(i)
    return "".join(chars), index


def strip_echoes(reply: str, candidates: Sequence[str]) -> str:
    """The reply with every verbatim copy of candidate text replaced by ECHO."""
    norm, index = _normalise(reply)
    covered = [False] * len(reply)
    for candidate in candidates:
        cand = _normalise(candidate)[0].strip()
        k = min(MIN_SPAN, len(cand))
        if k < MIN_WHOLE:
            continue  # too short to tell apart from a verdict such as "(A)"
        grams = {cand[i:i + k] for i in range(len(cand) - k + 1)}
        for i in range(len(norm) - k + 1):
            if norm[i:i + k] in grams:
                for j in range(index[i], index[i + k - 1] + 1):
                    covered[j] = True
    out: list[str] = []
    for i, c in enumerate(reply):
        if not covered[i]:
            out.append(c)
        elif i == 0 or not covered[i - 1]:
            out.append(ECHO)
    return "".join(out)


_LETTER = r"[*_`\s]*\(?\s*([AB])\s*\)?(?![A-Za-z0-9])"  # upper case only; ")" may be cut by a stop sequence
_NUMBER = r"(\d+(?:\.\d+)?)(?![\d.]*\d)"
_OUT_OF = r"(?:\s*(?:/|(?i:out\s+of))\s*\d+)?"
# A fixed-form line starts with the keyword; what follows the value on that line is ignored.
_VERDICT_LINE = re.compile(r"^[ \t>*_`#-]*(?i:verdict)[ \t*_`]*[:=]?" + _LETTER, re.MULTILINE)
_SCORE_LINE = re.compile(r"^[ \t>*_`#-]*(?i:score)[ \t*_`]*[:=][ \t*_`]*" + _NUMBER + _OUT_OF, re.MULTILINE)
_END = r"[*_`.!\s]*$"
_BARE_LETTER = re.compile(r"^" + _LETTER + _END)  # the whole reply: a continuation of "Verdict: ("
_BARE_NUMBER = re.compile(r"^[*_`\s]*" + _NUMBER + _OUT_OF + _END)  # the whole reply, after "Score:"


def _fixed_form(pattern: re.Pattern[str], reply: str, candidates: Sequence[str]) -> str | None:
    """The one value the reply's fixed-form lines agree on, or None (none, or a disagreement)."""
    found = pattern.findall(strip_echoes(reply, candidates))
    planted = {v for c in candidates for v in pattern.findall(c)}  # fixed-form lines inside candidates
    own = [v for v in found if v not in planted] or found
    return own[0] if own and len(set(own)) == 1 else None


def parse_choice(reply: str, candidates: Sequence[str] = ()) -> str | None:
    """"A", "B" or None: from the reply's `Verdict: (X)` lines (all of them must agree), or from a
    reply that is the bare letter (the continuation of a prefilled "Verdict: (")."""
    verdict = _fixed_form(_VERDICT_LINE, reply, candidates)
    if verdict is None and (m := _BARE_LETTER.match(reply.strip())):
        verdict = m.group(1)
    return verdict


def parse_score(reply: str, lo: int = 1, hi: int = 10, candidates: Sequence[str] = ()) -> int | None:
    """The judge's score in [lo, hi], or None: from the reply's `Score: N` lines (all of them must
    agree; "N/10" and "N out of 10" are accepted), or from a reply that is the bare number (the
    continuation of a prefilled "Score:"). A decimal rounds half up."""
    raw = _fixed_form(_SCORE_LINE, reply, candidates)
    if raw is None and (m := _BARE_NUMBER.match(reply.strip())):
        raw = m.group(1)
    if raw is None:
        return None
    value = int(float(raw) + 0.5)
    return value if lo <= value <= hi else None
