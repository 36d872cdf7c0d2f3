"""Revision and prompt gates (factory/hygiene/gates.py), the export's counted drops, and
`factory revision-check` on the labelled set."""

from __future__ import annotations

import json

from test_cli import factory

from factory.commands.revisioncheck import DEFAULT_SET, read_set
from factory.config import ExportConfig
from factory.constitution import load_constitution
from factory.engine.stats import StageStats
from factory.export.rows import rows
from factory.hygiene.gates import incoherent_request, relatedness, revision_gate
from factory.records import Candidate, Record, Round

MIRROR = "How do you hang a heavy mirror on a drywall wall?"
MIRROR_ANSWER = "Use wall anchors rated for the mirror's weight, or screw into a stud, then hang it on a wire."


def test_a_revision_that_leaves_the_subject_is_off_topic() -> None:
    revision = "You can go to a doctor's office and ask them for advice about your health."
    assert relatedness(MIRROR, revision) < relatedness(MIRROR, MIRROR_ANSWER)
    assert revision_gate(MIRROR, MIRROR_ANSWER, revision) == "off_topic"


def test_a_revision_that_critiques_the_answer_is_a_critique() -> None:
    prompt = "How can I make my resume stand out?"
    answer = "Lead with results: numbers, projects you shipped, and skills that match the job."
    revision = "The answer is against the principle of having multiple sides and should mention the risks."
    assert revision_gate(prompt, answer, revision) == "critique"


def test_critique_markers_are_counted_against_the_prompt_not_the_answer() -> None:
    prompt = "Write a short thank-you note to my child's teacher."
    answer = "Your response is reorganized: the revised note is more concise."  # critique talk already
    revision = "The user asked for a note. The answer should be warmer."
    assert revision_gate(prompt, answer, revision) == "critique"
    # A prompt that asks for a rewrite may get one that says so.
    essay = "Can you rewrite this sentence so it reads better: 'me and him goes to school'?"
    assert revision_gate(essay, "He and I go to school.", "Rewritten: 'He and I go to school.'") is None


def test_a_reply_may_speak_of_its_own_answer() -> None:
    prompt = "My friend Sarah asked me about my birthday."
    answer = "Email the chatbot's address to get your birthday recommendations."
    assert revision_gate(prompt, answer, "Sorry, my answer was unclear: what did Sarah ask about your birthday?") is None
    assert revision_gate(prompt, answer, "Sorry, the answer was unclear: what did Sarah ask about your birthday?") == "critique"


def test_a_good_revision_passes() -> None:
    revision = "Find a stud or use heavy-duty drywall anchors rated for the mirror's weight, and hang it on a wire."
    assert revision_gate(MIRROR, MIRROR_ANSWER, revision) is None


def test_incoherent_generated_prompts() -> None:
    assert incoherent_request("One item, two, three that are around. Seven, e...")
    assert incoherent_request("Your addlerram contains stolen cash from the ...")
    assert not incoherent_request("How do I keep basil alive on a windowsill?")
    assert not incoherent_request("Write a short poem about the sea.")


def test_export_counts_a_gated_pair_and_trains_on_the_answer() -> None:
    constitution = load_constitution("constitutions/harmless.yaml")
    rec = Record.new(MIRROR, "seed")
    revision = "You can go to a doctor's office and ask them for advice about your health."
    rec.candidates = [Candidate(index=0, answer=MIRROR_ANSWER, finish_reason="stop", rounds=[
        Round(principle_id="harmful-content", critique="c", revision=revision, noop=False, gate="off_topic")])]
    st = StageStats()
    out = list(rows(rec, constitution, "local:smollm2", ExportConfig(), st))
    assert [name for name, _ in out] == ["sft"]
    assert out[0][1]["messages"][-1]["content"] == MIRROR_ANSWER
    assert st.dropped == {"prefs:gate_off_topic": 1}


def test_revision_check_reports_each_gate(tmp_path) -> None:
    resume = "How can I make my resume stand out?"
    triples = [
        (MIRROR, MIRROR_ANSWER, "You can go to a doctor's office and ask them for advice about your health.", "off_topic"),
        (resume, "Lead with results and numbers.", "The answer is against the principle and should be longer.", "critique"),
        (MIRROR, MIRROR_ANSWER, "Find a stud or use drywall anchors rated for the mirror, and hang it on a wire.", "better"),
        (MIRROR, MIRROR_ANSWER, "Your answer about the mirror: use anchors for the heavy mirror on the wall.", "better"),
        (resume, "Lead with results and numbers.", "Lead with results, numbers and a resume that stands out.", "worse"),
    ]
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "answer": a, "revision": r, "label": lab}) + "\n"
                            for p, a, r, lab in triples))
    result = factory("revision-check", path, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["triples"] == 5 and report["labels"] == {"better": 2, "worse": 1, "off_topic": 1, "critique": 1}
    # the fourth is flagged as a critique ("Your answer"): precision 1/2, recall 1/1
    assert report["critique"] == {"flagged": 2, "precision": 0.5, "recall": 1.0}
    assert report["off_topic"] == {"flagged": 1, "precision": 1.0, "recall": 1.0}
    assert report["all_gates"] == {"bad_caught": 1.0, "better_dropped": 0.5, "worse_dropped": 0.0}
    assert len(read_set(DEFAULT_SET)) >= 12  # the shipped set reads


def test_revision_check_bad_line_names_file_and_line(tmp_path) -> None:
    bad = tmp_path / "set.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "answer": "a", "revision": "r", "label": "better"}) + "\n{oops\n")
    result = factory("revision-check", bad)
    assert result.returncode == 2 and f"{bad}:2" in result.stderr and "Traceback" not in result.stderr


def test_a_judged_pair_the_judge_reversed_in_both_orders_is_dropped() -> None:
    from factory.export.rows import reversed_both_orders
    from factory.records import Comparison, Judgement, Option, Pair, Verdict

    def judged(p_first: float, p_second: float) -> Judgement:
        """Option 1 (the revision) chosen over option 0 by the ranking; the verdicts say otherwise or not."""
        verdicts = [Verdict(a=0, b=1, p_a=p_first, source="logprobs"), Verdict(a=1, b=0, p_a=p_second, source="logprobs")]
        return Judgement(judge_model="local:smollm2", method="choice",
                         options=[Option(candidate=0, kind="initial", text="a"), Option(candidate=0, kind="final", text="b")],
                         comparisons=[Comparison(i=0, j=1, principle_id="p", p_i=0.5, consistent=True, by="judge",
                                                 verdicts=verdicts)],
                         scores=[0.0, 1.0],
                         pairs=[Pair(judge_model="local:smollm2", chosen=1, rejected=0, p_chosen=0.6, score_chosen=1.0,
                                     score_rejected=0.0, consistent=True, principle_ids=["p"])])

    assert reversed_both_orders(judged(0.8, 0.3), 1, 0)  # (A)=answer wins, then (B)=answer wins
    assert not reversed_both_orders(judged(0.8, 0.7), 1, 0)  # the orders disagree: position bias, not a verdict
    assert not reversed_both_orders(judged(0.2, 0.7), 1, 0)  # both prefer the revision
    rec = Record.new(MIRROR, "seed")
    rec.candidates = [Candidate(index=0, answer="a", finish_reason="stop",
                                rounds=[Round(principle_id="p", critique="c", revision="b", noop=False)])]
    rec.judgement = judged(0.8, 0.3)
    st = StageStats()
    out = list(rows(rec, load_constitution("constitutions/harmless.yaml"), "local:smollm2", ExportConfig(), st))
    assert [name for name, _ in out] == ["sft"] and st.dropped["prefs:gate_judge_reversed"] == 1
