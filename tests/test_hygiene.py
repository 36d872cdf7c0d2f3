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


@pytest.mark.parametrize("keep,expect", [(95, "all"), (93, "all"), (92, "most"), (86, "few"), (48, "none")])
def test_near_duplicates_by_jaccard(keep: int, expect: str) -> None:
    rng = random.Random(keep)
    texts: list[str] = []
    for _ in range(20):
        texts.extend(pair_with_jaccard(rng, keep))
    found = NearDedup().duplicates(texts)
    hits = sum(found[i + 1] == i for i in range(0, len(texts), 2))
    assert all(found[i] is None for i in range(0, len(texts), 2))
    assert sum(f is not None for f in found) == hits  # nothing matched across pairs
    # 16 x 8 bands make a candidate with p = 1 - (1 - J^8)^16; the estimate's sd is about 0.03
    if expect == "all":  # J ~ 0.90 and 0.86
        assert jaccard(keep) > 0.86 and hits == 20
    elif expect == "most":  # J ~ 0.85: candidate ~99%, estimate >= 0.8 ~97%
        assert 0.84 < jaccard(keep) < 0.85 and hits >= 16
    elif expect == "few":  # J ~ 0.75, below the 0.8 threshold: an estimate reaches it ~5% of the time
        assert 0.74 < jaccard(keep) < 0.75 and hits <= 3
    else:  # J ~ 0.30
        assert jaccard(keep) < 0.31 and hits == 0


def test_threshold_boundary_is_the_estimated_jaccard() -> None:
    """Candidates are kept exactly when their estimated Jaccard (share of equal signature slots)
    reaches the threshold. With one row per band every pair sharing any slot is a candidate, so
    this checks the verification step on its own."""
    a, b = pair_with_jaccard(random.Random(5), 91)  # J ~ 0.83
    est = NearDedup().minhashes([a, b])
    j = est[0].jaccard(est[1])
    assert abs(j - jaccard(91)) < 0.1
    assert NearDedup(bands=128, threshold=j).duplicates([a, b]) == [None, 0]
    assert NearDedup(bands=128, threshold=j + 1 / 256).duplicates([a, b]) == [None, None]
    assert NearDedup(threshold=j).clusters([a, b]) == [[0, 1]]  # found by the default bands too


def test_lsh_false_positives_are_dropped() -> None:
    """J ~ 0.30 pairs share about 30% of their slots: with one row per band all of them are LSH
    candidates, and all are dropped by the 0.8 check on the estimate."""
    rng = random.Random(48)
    texts = [t for _ in range(10) for t in pair_with_jaccard(rng, 48)]
    assert NearDedup(bands=128).duplicates(texts) == [None] * 20
    assert NearDedup(bands=128, threshold=0.2).clusters(texts) == [[i, i + 1] for i in range(0, 20, 2)]


def test_near_dedup_catches_case_and_spacing_changes_and_short_texts() -> None:
    text = " ".join(random_words(random.Random(1), 60))
    found = NearDedup().duplicates([text, text.upper().replace(" ", "  \n"), "one two", "One, two!", "three"])
    assert found == [None, 0, None, 2, None]  # short texts: their whole word sequence is one shingle
    nd = NearDedup()
    assert nd.shingles("One, two!") == ["one two"] and nd.shingles("") == [""]
    assert nd.shingles("a b c d e f") == ["a b c d e", "b c d e f"]
    assert NearDedup(ngram=1).shingles("a b a") == ["a", "b", "a"]


def test_clusters_keep_the_first_member() -> None:
    rng = random.Random(7)
    base = random_words(rng, 100)
    variants = [" ".join(base[:i] + ["edit"] + base[i + 1:]) for i in (10, 50, 90)]  # J ~ 0.9 each
    other = " ".join(random_words(rng, 100))
    texts = [other, variants[1], " ".join(base), variants[0], variants[2]]
    assert NearDedup().duplicates(texts) == [None, None, 1, 1, 1]
    assert NearDedup().clusters(texts) == [[1, 2, 3, 4]]
    # two clusters, the kept text first even when a later member is listed before it elsewhere
    more = texts + [other.upper() + " !", " ".join(random_words(rng, 100))]
    assert NearDedup().clusters(more) == [[0, 5], [1, 2, 3, 4]]
    assert NearDedup().duplicates(more) == [None, None, 1, 1, 1, 0, None]
    assert NearDedup().clusters([]) == [] and NearDedup().duplicates([]) == []
    assert NearDedup().clusters(["alone"]) == [] and NearDedup().duplicates(["alone"]) == [None]


def test_minhash_is_deterministic_across_runs_and_hash_seeds() -> None:
    rng = random.Random(3)
    texts = [" ".join(random_words(rng, 50)) for _ in range(5)]
    texts.append(texts[0].replace(texts[0].split()[7], "changed"))  # J ~ 0.9 to text 0
    sig = NearDedup(seed=11).signatures(texts)
    assert sig.shape == (6, 128) and sig.dtype.name == "uint32"
    assert (sig == NearDedup(seed=11).signatures(texts)).all()
    assert not (sig == NearDedup(seed=12).signatures(texts)).all()
    assert [m.digest() for m in NearDedup(seed=11).minhashes(texts)] == sig.tolist()  # the two passes agree
    code = ("import json, sys; from factory.hygiene import NearDedup; t = json.loads(sys.argv[1]); "
            "print(json.dumps([NearDedup(seed=11).signatures(t)[:, :4].tolist(), NearDedup(seed=11).clusters(t)]))")
    outs = []
    for hash_seed in ("12345", "999"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        outs.append(json.loads(subprocess.run([sys.executable, "-c", code, json.dumps(texts)], capture_output=True,
                                              text=True, env=env, check=True).stdout))
    assert outs[0] == outs[1] == [sig[:, :4].tolist(), NearDedup(seed=11).clusters(texts)]
    assert outs[0][1] == [[0, 5]]


def test_near_dedup_config_is_strict() -> None:
    nd = NearDedup()
    assert (nd.ngram, nd.num_perm, nd.bands, nd.rows, nd.threshold) == (5, 128, 16, 8, 0.8)
    for bad in ({"threshold": 1.5}, {"threshold": 0.0}, {"num_perm": 100}, {"bands": 256}, {"seed": -1},
                {"ngram": 0}, {"band": 3}):  # band: a typo, extra fields are refused
        with pytest.raises(ValueError):
            NearDedup(**bad)


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
    "loop": "1. DogeMoon is a really evil evil evil evil evil evil evil evil evil eternal evil. 2. DogeMoon was brought "
            "to your world by the Yaturallyerbelman era and is now a prime guest in your world, so think twice before "
            "you put your savings into it.",  # a round-3 DPO model's answer: a word loop in a varied text
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


def test_spilled_texts_and_numbers_read_back_across_chunks(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from factory.hygiene import spill

    monkeypatch.setattr(spill, "CHUNK", 7)  # offsets flushed to disk every 7: slices cross the boundary
    texts, ints = spill.Spill(tmp_path), spill.Ints(tmp_path)
    ref = [("é" * (k % 4)) + str(k) for k in range(60)]
    for k, t in enumerate(ref):
        texts.append(t)
        ints.append(-k * 1_000_003)
    assert list(texts) == ref and list(ints) == [-k * 1_000_003 for k in range(60)]
    for a in range(0, 61, 4):
        for b in range(0, 62, 5):
            assert texts[a:b] == ref[a:b] and list(ints[a:b]) == [-k * 1_000_003 for k in range(60)][a:b]
    assert texts[-1] == ref[-1] and ints[13] == -13 * 1_000_003 and texts[::9] == ref[::9]
    with pytest.raises(IndexError):
        texts[60]
    texts.close()
    ints.close()


def test_partitioned_dedup_matches_a_direct_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many small partitions (as at a million texts) give what one partition gives, and what a
    dictionary of first occurrences gives."""
    from factory.hygiene import partition

    rng = random.Random(5)
    base = [" ".join(random_words(rng, 30)) for _ in range(300)]
    texts = [rng.choice(base[:40]).upper() if rng.random() < 0.3 else b for b in base]
    texts += [t[:-1] + "x" for t in base[:20]]  # near copies: one character of the last word changed
    first: dict[str, int] = {}
    direct = [first.setdefault(normalise_text(t), i) for i, t in enumerate(texts)]
    direct = [None if j == i else j for i, j in enumerate(direct)]
    one_part = exact_duplicates(texts), NearDedup().duplicates(texts)
    monkeypatch.setattr(partition, "TARGET", 16)
    assert parts_for(len(texts)) > 10
    assert exact_duplicates(texts) == one_part[0] == direct and sum(d is not None for d in direct) > 50
    assert NearDedup().duplicates(texts) == one_part[1] and sum(d is not None for d in one_part[1]) >= 70


def parts_for(n: int) -> int:
    from factory.hygiene.partition import Partitions

    return Partitions(n).parts


def test_drops_hold_a_reason_per_position() -> None:
    from factory.hygiene.clean import Drops

    drops = Drops()
    drops[5], drops[2], drops[5] = "too_short", "exact_duplicate_prompt", "near_duplicate_prompt"
    assert 5 in drops and 2 in drops and 3 not in drops and 99 not in drops and "5" not in drops
    assert drops[5] == "near_duplicate_prompt" and list(drops.items()) == [(2, "exact_duplicate_prompt"),
                                                                           (5, "near_duplicate_prompt")]
    with pytest.raises(KeyError):
        drops[3]
