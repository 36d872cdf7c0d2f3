"""The pure logic of AI-feedback judging, and classifier teachers.

- labels: soft labels from first-token log-probs (A/B choice, both orders, 1-10 expected score)
  or from sampled verdicts.
- parse: verdicts and scores read from reply text, robust to candidates echoed by the judge.
- ranking: soft win counts, Bradley-Terry, and the preference pairs to export.
- teachers: classifier scorers (VADER, a local Hugging Face classifier) that stand in for a judge.

Nothing here calls a model; the judge stage does, and hands the results to these functions.
teachers imports vaderSentiment, torch and transformers only when a scorer is built.
"""

from factory.judging.labels import (
    choice_probability,
    clamp_cot,
    combine_orders,
    expected_score,
    vote_probability,
)
from factory.judging.parse import parse_choice, parse_score, strip_echoes
from factory.judging.ranking import (
    bradley_terry,
    rank,
    select_pairs,
    sigmoid,
    win_counts,
)
from factory.judging.teachers import (
    SCORER_FORMS,
    AppliesWhen,
    HFClassifierScorer,
    Scorer,
    VaderScorer,
    load_scorer,
    score_where,
)

__all__ = [
    "SCORER_FORMS",
    "AppliesWhen",
    "HFClassifierScorer",
    "Scorer",
    "VaderScorer",
    "bradley_terry",
    "choice_probability",
    "clamp_cot",
    "combine_orders",
    "expected_score",
    "load_scorer",
    "parse_choice",
    "parse_score",
    "rank",
    "score_where",
    "select_pairs",
    "sigmoid",
    "strip_echoes",
    "vote_probability",
    "win_counts",
]
