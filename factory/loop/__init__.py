"""`factory loop`: iterated rounds. Each round generates with the previous round's policy, labels with
the pipeline's judge and teachers (or the policy itself: self-rewarding), trains, and evaluates the new
policy against round 0 and the previous round.

    config.py   the loop config (a pipeline plus a `loop:` section) and the checks made before any model loads
    steps.py    the rounds, their steps and loop.json; --resume continues at the step where it stopped
    table.py    the per-round table (`factory inspect LOOP_DIR`) and the loop's report.html
"""

from factory.loop.config import LoopConfig, load_loop
from factory.loop.steps import run_loop

__all__ = ["LoopConfig", "load_loop", "run_loop"]
