"""Quality filters for model answers.

Small models (the embedded 135M one especially) loop, spray emoji, echo the prompt's scaffolding
("Critique: ...") and leak control characters. Each filter is a function `(text, cfg) -> reason |
None`; `check` runs the enabled ones in FILTERS order and returns the first failing reason name.
All of them are a few regex or str passes: `check` takes about 0.07 ms for a 100-word answer and
1.4 ms for a 2000-word one (measured on the 2-core dev box).
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Sequence
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from factory.hygiene.dedup import normalise_text, words

Reason = Literal["too_short", "too_long", "non_printable", "template_echo", "emoji_run", "char_repeat",
                 "symbols", "repetition", "loop", "refusal_boilerplate"]


class QualityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_words: int = Field(3, ge=0)
    max_words: int = Field(2000, ge=1)
    # Share of word 3-gram occurrences that repeat an earlier 3-gram of the same text. The idea is
    # Gopher's repetition filters (text whose n-grams recur too much is degenerate), simplified to
    # one n-gram size and an occurrence count instead of a character share.
    max_repeated_ngram_fraction: float = Field(0.3, ge=0.0, le=1.0)
    max_char_repeat_run: int = Field(20, ge=1)  # longest run of one identical non-space character
    max_emoji_fraction: float = Field(0.1, ge=0.0, le=1.0)  # emoji among non-space characters
    max_emoji_run: int = Field(5, ge=1)  # emoji in a row (spaces between them allowed)
    max_non_alnum_fraction: float = Field(0.4, ge=0.0, le=1.0)  # symbols among non-space characters
    echo_markers: list[str] = Field(default_factory=lambda: ["Request:", "Critique:", "Revision:",
                                                             "Principle:"])  # at a line start
    refusal_markers: list[str] = Field(default_factory=list)  # refusal_boilerplate runs only when set
    enabled: list[Reason] = Field(default_factory=lambda: list(get_args(Reason)))


DEFAULT = QualityConfig()

# Emoji by code block, no extra dependency: pictographs, emoticons, transport, supplemental symbols
# (U+1F000-1FAFF), misc symbols and dingbats (U+2600-27BF), stars and arrows (U+2B00-2BFF), and the
# joiners that glue emoji sequences (variation selector 16, zero-width joiner, keycap).
_EMOJI_CLASS = "\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\uFE0F\u200D\u20E3"
_EMOJI = re.compile(f"[{_EMOJI_CLASS}]")
_EMOJI_RUN = re.compile(f"[{_EMOJI_CLASS}](?:\\s*[{_EMOJI_CLASS}])*")  # emoji, spaces allowed between
_PARTS = re.compile("[\uFE0F\u200D\u20E3\U0001F3FB-\U0001F3FF]")  # joiners, keycap, skin tones
# Control characters other than tab/newline/CR, C1 controls, surrogates, private use, the
# replacement character (a decoding error upstream), zero-width space, bidi overrides and the BOM.
# Unassigned code points are not checked: that needs a per-character unicodedata loop.
_NON_PRINTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ue000-\uf8ff"
                            "\ufffd\u200b\u202a-\u202e\u2066-\u2069\ufeff]")
_WORD = re.compile(r"\w+")
_SYMBOL = re.compile(r"[^\w\s]")
_TABLE_RULE = re.compile(r"^[ \t|:]*-[ \t|:-]*$", re.MULTILINE)  # a line of only - | : and blanks


def _non_space(text: str) -> int:
    return len(text) - sum(map(text.count, " \n\t\r"))


def too_short(text: str, cfg: QualityConfig = DEFAULT) -> str | None:
    """Words are runs of letters and digits: '- - - !!!' has none. Stops counting at min_words."""
    found = sum(1 for _ in itertools.islice(_WORD.finditer(text), cfg.min_words))
    return "too_short" if found < cfg.min_words else None


def too_long(text: str, cfg: QualityConfig = DEFAULT) -> str | None:
    if (len(text) + 1) // 2 <= cfg.max_words:  # words need a separator: at most (len + 1) / 2 of them
        return None
    return "too_long" if len(_WORD.findall(text)) > cfg.max_words else None


def non_printable(text: str, cfg: QualityConfig = DEFAULT) -> str | None:
    return "non_printable" if _NON_PRINTABLE.search(text) else None


def template_echo(text: str, cfg: QualityConfig = DEFAULT) -> str | None:
    """A line that starts with one of the prompt's scaffolding labels, case-insensitively; markdown
    decoration before it (`**Critique:**`, `# Revision:`, `> Request:`) still counts."""
    if not cfg.echo_markers:
        return None
    return "template_echo" if _echo_pattern(tuple(cfg.echo_markers)).search(text) else None


@functools.lru_cache(maxsize=32)
def _echo_pattern(markers: tuple[str, ...]) -> re.Pattern[str]:
    labels = "|".join(re.escape(m) for m in markers)
    return re.compile(rf"^[\s*#>_-]*(?:{labels})", re.IGNORECASE | re.MULTILINE)


def emoji_run(text: str, cfg: QualityConfig = DEFAULT) -> str | None:
    """Too many emoji overall, or more than max_emoji_run in a row. Joiners and skin tones are
    not counted: they are parts of one visible emoji."""
    count = _emoji_count(text)
    if not count:
        return None
    if count > cfg.max_emoji_fraction * max(_non_space(text), 1):
        return "emoji_run"
    longest = max(_emoji_count(m.group()) for m in _EMOJI_RUN.finditer(text))
    return "emoji_run" if longest > cfg.max_emoji_run else None


def _emoji_count(s: str) -> int:
    return len(_EMOJI.findall(_PARTS.sub("", s)))


def char_repeat(text: str, cfg: QualityConfig = DEFAULT) -> str | None:
    run = rf"(\S)\1{{{cfg.max_char_repeat_run},}}"  # more than max identical characters in a row
    return "char_repeat" if re.search(run, text) else None  # re caches the compiled pattern


def symbols(text: str, cfg: QualityConfig = DEFAULT) -> str | None:
    """Too few letters and digits: markup debris, ASCII art, a wall of punctuation. Markdown layout
    (table pipes, |---|:--:| rows, --- rules, ``` fences) is ignored: short tables and code snippets
    would fail otherwise."""
    body = _TABLE_RULE.sub("", text).replace("|", "").replace("```", "")
    count = len(_SYMBOL.findall(body))
    return "symbols" if count > cfg.max_non_alnum_fraction * max(_non_space(body), 1) else None


def repetition(text: str, cfg: QualityConfig = DEFAULT) -> str | None:
    toks = words(text)
    grams = list(zip(toks, toks[1:], toks[2:]))
    if len(grams) < 2:
        return None
    repeated = 1 - len(set(grams)) / len(grams)
    return "repetition" if repeated > cfg.max_repeated_ngram_fraction else None


def degenerate(seq: Sequence, run: int = 8, period: int = 4, span: int = 24) -> bool:
    """Empty, or a repeated run: one item `run` times in a row, or a pattern of at most `period` items
    repeated over `span` items or more (the loops a collapsing policy writes). Items: token ids, or the
    words of a text (the held-out evaluation's degenerate share, and the `loop` filter)."""
    if not seq:
        return True
    for p in range(1, period + 1):
        need = run if p == 1 else span
        same = 0
        for i in range(p, len(seq)):
            same = same + 1 if seq[i] == seq[i - p] else 0
            if same + p >= need:
                return True
    return False


def loop(text: str, cfg: QualityConfig = DEFAULT) -> str | None:
    """A word loop ("evil evil evil ..." eight times, or a phrase of up to 4 words repeated over 24), which
    `repetition` misses when the rest of a long text varies. Words are split on whitespace, as the
    held-out evaluation counts them; an empty text is `too_short`'s."""
    toks = text.split()
    return "loop" if toks and degenerate(toks) else None


def refusal_boilerplate(text: str, cfg: QualityConfig = DEFAULT) -> str | None:
    """Contains one of the configured refusal phrases (compared after normalisation)."""
    norm = normalise_text(text)
    hit = any(normalise_text(m) in norm for m in cfg.refusal_markers if normalise_text(m))
    return "refusal_boilerplate" if hit else None


FILTERS: dict[Reason, Callable[[str, QualityConfig], str | None]] = {
    "too_short": too_short, "too_long": too_long, "non_printable": non_printable,
    "template_echo": template_echo, "emoji_run": emoji_run, "char_repeat": char_repeat,
    "symbols": symbols, "repetition": repetition, "loop": loop, "refusal_boilerplate": refusal_boilerplate,
}


def check(text: str, cfg: QualityConfig = DEFAULT) -> str | None:
    """The first failing reason among the enabled filters, in FILTERS order; None if the text passes."""
    for name, run in FILTERS.items():
        if name in cfg.enabled and (reason := run(text, cfg)):
            return reason
    return None
