"""`factory constitution discover`: principles from evidence (Inverse Constitutional AI).

- prefs: read a preference dataset (JSONL, Parquet, a run directory or a Hugging Face dataset
  folder), validate it whole, split it by prompt into proposal and held-out pairs.
- propose: the model writes candidate principles that would explain sampled choices; MinHash
  clusters near-duplicate texts and each cluster keeps its most proposed wording.
- score: each candidate is the judge's only principle on the held-out pairs (the judge stage
  itself: both orders, soft labels, the call cache); agreement, coverage and a prompt-clustered
  interval decide which are kept.
- write: critique and revision requests for each kept principle, few-shot examples from the
  pairs, the constitution YAML (annotated and ranked) and report.html.
- run: the command itself, and its `--dry-run` estimate.
"""
