"""Model-written evaluations, calibration and red teaming.

- items: the eval-set schema, read (bad rows located by file, line, field) and written (Parquet + card).
- session: one pipeline's models behind one Caller in one output folder; two-order A/B probabilities.
- generate: `factory evals generate` (behaviour sets and QA sets from a search corpus).
- run: `factory eval --set`: behaviour-match rate, QA accuracy / decline / wrong-answer rates.
- calibration: P(IK) and P(True) against correctness from K samples: AUROC, ECE, reliability bins.
- redteam: `factory redteam`: attack, answer, label harmful; rewrite the successful attacks each round.
"""
