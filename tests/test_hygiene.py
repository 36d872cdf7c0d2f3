"""Hygiene: exact and near dedup, decontamination, quality filters. Texts are built so that their
shingle overlap (and so their true Jaccard similarity) is known."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from factory.errors import InputError
from factory.hygiene import (
    Decontaminator,
    NearDedup,
    QualityConfig,
    check,
    exact_duplicates,
    filters,
    normalise_text,
)

PARAGRAPH = ("Photosynthesis is how plants turn light, water and carbon dioxide into sugar and oxygen. "
             "It happens mostly in the leaves, inside small green bodies called chloroplasts, and it "
             "feeds nearly every food chain on Earth.")


def random_words(rng: random.Random, n: int) -> list[str]:
    return [f"w{rng.randrange(10**9)}" for _ in range(n)]


def pair_with_jaccard(rng: random.Random, keep: int, n: int = 100) -> tuple[str, str]:
    """Two n-word texts sharing their first `keep` words (all words distinct): they share keep-4
    of their n-4 word 5-grams each, so Jaccard = (keep-4) / (2(n-4) - (keep-4))."""
    base = random_words(rng, n)
    return " ".join(base), " ".join(base[:keep] + random_words(rng, n - keep))


def jaccard(keep: int, n: int = 100) -> float:
    shared = keep - 4
    return shared / (2 * (n - 4) - shared)


def test_normalise_and_exact_duplicates() -> None:
    assert normalise_text("  «Hello,\n  WORLD!»  ") == "hello, world"
    texts = ["Hello  world.", "hello world", "HELLO\tWORLD!", "hello, world", "Ｈｅｌｌｏ world"]
    assert exact_duplicates(texts) == [None, 0, 0, None, 0]  # NFKC folds the full-width letters
    assert exact_duplicates([]) == []


@pytest.mark.parametrize("keep,expect", [(89, "most"), (95, "all"), (48, "none")])
def test_near_duplicates_by_jaccard(keep: int, expect: str) -> None:
    rng = random.Random(keep)
    texts: list[str] = []
    for _ in range(20):
        texts.extend(pair_with_jaccard(rng, keep))
    found = NearDedup().duplicates(texts)
    hits = sum(found[i + 1] == i for i in range(0, len(texts), 2))
    assert all(found[i] is None for i in range(0, len(texts), 2))
    assert sum(f is not None for f in found) == hits  # nothing matched across pairs
    if expect == "all":  # J ~ 0.90
        assert jaccard(keep) > 0.88 and hits == 20
    elif expect == "most":  # J ~ 0.80: LSH at 14x8 finds ~92%, the 0.75 check keeps ~90% of those
        assert 0.79 < jaccard(keep) < 0.81 and hits >= 14
    else:  # J ~ 0.30
        assert jaccard(keep) < 0.31 and hits == 0


def test_near_dedup_catches_case_and_spacing_changes_and_short_texts() -> None:
    text = " ".join(random_words(random.Random(1), 60))
    found = NearDedup().duplicates([text, text.upper().replace(" ", "  \n"), "one two", "One, two!", "three"])
    assert found == [None, 0, None, 2, None]  # short texts: their whole word sequence is one shingle


def test_clusters_keep_the_first_member() -> None:
    rng = random.Random(7)
    base = random_words(rng, 100)
    variants = [" ".join(base[:i] + ["edit"] + base[i + 1:]) for i in (10, 50, 90)]  # J ~ 0.9 each
    other = " ".join(random_words(rng, 100))
    texts = [other, variants[1], " ".join(base), variants[0], variants[2]]
    assert NearDedup().duplicates(texts) == [None, None, 1, 1, 1]


def test_minhash_is_deterministic_across_runs_and_hash_seeds() -> None:
    rng = random.Random(3)
    texts = [" ".join(random_words(rng, 50)) for _ in range(5)]
    sig = NearDedup(seed=11).signatures(texts)
    assert (sig == NearDedup(seed=11).signatures(texts)).all()
    assert not (sig == NearDedup(seed=12).signatures(texts)).all()
    code = ("import json, sys; from factory.hygiene import NearDedup; "
            "print(NearDedup(seed=11).signatures(json.loads(sys.argv[1]))[:, :4].tolist())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(texts)], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert json.loads(out) == sig[:, :4].tolist()


def test_near_dedup_config_is_strict() -> None:
    assert NearDedup().num_perm == 112
    with pytest.raises(ValueError):
        NearDedup(threshold=1.5)
    with pytest.raises(ValueError):
        NearDedup(band=3)  # typo: extra fields are refused


EVAL = ("the committee met on a rainy tuesday to decide whether the old bridge over the river "
        "should be repaired or replaced before the winter floods arrived")


def test_decontam_finds_a_lifted_13_gram_and_ignores_12() -> None:
    d = Decontaminator.from_texts([EVAL, "What is two plus two?"], name="toyeval")
    words = EVAL.split()
    lifted = " ".join(words[5:18])  # 13 words
    answer = f"Let me think. Honestly, {lifted.upper()}, or so the story goes in the town."
    assert d.match(answer) == 'toyeval: "rainy tuesday to decide whether the old bridge ..."'
    twelve = " ".join(words[5:17])
    assert d.match(f"Let me think. {twelve}, and then something else entirely happened.") is None
    assert d.match("What is TWO plus two") == 'toyeval: "what is two plus two"'  # short: whole text
    assert d.match("two plus two") is None and d.match("") is None
    assert d.match_many([answer, "nothing here", "what is two plus two!"])[1] is None


def test_decontam_merges_sets_and_loads_files(tmp_path) -> None:
    path = tmp_path / "quiz.jsonl"
    path.write_text(json.dumps({"question": EVAL}) + "\n\n" + json.dumps({"question": "Short one?"}) + "\n")
    d = Decontaminator.from_file(path, "question").merged(Decontaminator.from_texts(["alpha beta"], name="x"))
    assert d.match(EVAL).startswith("quiz: ") and d.match("Alpha, beta.") == 'x: "alpha beta"'
    txt = tmp_path / "lines.txt"
    txt.write_text(EVAL + "\n")
    assert Decontaminator.from_file(txt, "ignored").match(EVAL).startswith("lines: ")


@pytest.mark.parametrize("line,where", [("{not json", None), ('{"q": 3}', "q"), ('{"other": "x"}', "q"),
                                        ('["a list"]', None)])
def test_decontam_bad_jsonl_line_is_located(tmp_path, line: str, where: str | None) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"q": "fine text"}\n' + line + "\n")
    with pytest.raises(InputError) as err:
        Decontaminator.from_file(path, "q")
    assert err.value.line == 2 and err.value.field == where and str(path) in str(err.value)


def test_decontam_parquet_missing_column(tmp_path) -> None:
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "eval.parquet"
    pq.write_table(pa.table({"prompt": [EVAL, None]}), path)
    with pytest.raises(InputError) as err:
        Decontaminator.from_file(path, "question")
    assert err.value.field == "question"
    with pytest.raises(InputError) as err:
        Decontaminator.from_file(path, "prompt")
    assert err.value.line == 2


BAD = {  # text a small model really produces -> the filter that must catch it
    "too_short": "Yes.",
    "too_long": "word " * 2001,
    "non_printable": "Here is the answer\x00\x1b[0m you wanted, friend.",
    "template_echo": "Sure, I can fix that.\n**Critique:** The response was rude to the user.",
    "emoji_run": "That sounds like a lovely plan for the weekend, enjoy it! 🎉🎉 🎉🎉🎉🎉😊",
    "char_repeat": "Nooooooooooooooooooooooooooooo, that is not what happened at all.",
    "symbols": "{{{[[[ ]]]}}} ### @@@ !!! ??? ;;; ::: ~~~ a b c",
    "repetition": "I am happy to help you. " * 8,
    "refusal_boilerplate": "As an AI language model, I cannot share opinions on that topic.",
}
CFG = QualityConfig(refusal_markers=["As an AI language model"])


@pytest.mark.parametrize("reason", list(BAD))
def test_each_filter_fires_on_its_bad_text_and_not_on_a_paragraph(reason: str) -> None:
    assert filters.FILTERS[reason](BAD[reason], CFG) == reason
    assert check(BAD[reason], CFG) == reason
    assert filters.FILTERS[reason](PARAGRAPH, CFG) is None


def test_filters_defaults_and_config() -> None:
    assert check(PARAGRAPH) is None and check(PARAGRAPH, CFG) is None
    assert check(BAD["refusal_boilerplate"]) is None  # only when markers are configured
    assert check("A fine 👍🏽 answer with one emoji in a normal sentence about the weather today.") is None
    assert check("| Name | Age |\n|------|:---:|\n| Ann  | 31  |\n| Bob  | 27  |") is None  # table layout
    assert check("Here:\n```python\ndef add(a, b):\n    return a + b\n```") is None
    assert check("- - - - - - - - - - !!!") == "too_short"  # no words at all
    assert check(BAD["emoji_run"], QualityConfig(enabled=["too_short"])) is None
    assert check("Critique: this one is fine.", QualityConfig(echo_markers=[])) is None
    with pytest.raises(ValueError):
        QualityConfig(enabled=["no_such_filter"])
    with pytest.raises(ValueError):
        QualityConfig(min_word=3)
