"""The loop's overhead beyond its rounds' own steps: `python bench/loop_overhead.py LOOP_DIR` prints the
loop's wall time (loop.json, every resume included), the sum of its steps' seconds (each run, mix,
train and eval step as timed around the step's function) and the difference as a share of the wall.
Target: under 5%."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(folder: str) -> None:
    manifest = json.loads((Path(folder) / "loop.json").read_text())
    steps = sum(s.get("seconds", 0) for s in manifest["steps"].values())
    wall = manifest["wall_seconds"]
    print(f"{folder}: {manifest['rounds']} round(s), wall {wall:.1f} s, steps {steps:.1f} s, "
          f"overhead {wall - steps:.2f} s = {100 * (wall - steps) / wall:.2f}% of the wall")
    for key, s in manifest["steps"].items():
        print(f"  {key:14} {s.get('seconds', 0):8.1f} s")


if __name__ == "__main__":
    main(sys.argv[1])
