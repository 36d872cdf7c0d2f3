"""Disk per record against the text it holds: N prompts through answer, one critique and one
revision (3 calls per record) against the local test server, in its own process, at low latency.
The server answers with real English prose (Wikipedia summaries from the offline search corpus,
about `--words` words per answer or revision and half that per critique), so compression sees text
like a model's, not a repeated template.

    python bench/storage.py [--n 2000] [--words 150] [--concurrency 64] [--keep DIR]

Prints, per file of the run directory, bytes on disk per record, and the text bytes per record: the
UTF-8 bytes of every text a record holds (its prompt, answer, critique and revision), counted from
the run's own records. The target is disk per record at most 3x the text.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))


def prose() -> list[str]:
    """Every word of the offline corpus's summaries, in order."""
    import importlib.util

    from factory.search.local import WIKI_FILE, WIKI_PACKAGE

    folder = Path(importlib.util.find_spec(WIKI_PACKAGE).submodule_search_locations[0])
    data = json.loads((folder / WIKI_FILE).read_text())
    return " ".join(entry["extract"] for entry in data.values()).split()


def serve(words: int) -> None:
    """The test server with a responder that writes prose: a slice of the corpus chosen by a hash of
    the request, `words` long (half for a critique)."""
    from server import FakeAPIServer

    corpus = prose()

    def responder(messages: list[dict], body: dict) -> str:
        last = messages[-1]["content"]
        last = last if isinstance(last, str) else json.dumps(last)
        n = words // 2 if "critique" in last[-200:].lower() else words
        start = int(hashlib.sha256(last.encode()).hexdigest()[:8], 16) % (len(corpus) - n)
        return " ".join(corpus[start:start + n])

    srv = FakeAPIServer(responder, record=False).start()
    print(srv.url, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        threading.Event().wait()
    finally:
        srv.stop()


def write_prompts(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"Question {i}: what should I know about topic {i * 7919 % 100003}, "
                                          "and how would you explain it to a friend?"}) + "\n")


def config(path: Path, args: argparse.Namespace) -> Path:
    """bench/throughput.py's pipeline, with answers and revisions long enough for `--words`."""
    from throughput import config as throughput_config

    cfg = json.loads(throughput_config(path, args).read_text())
    cfg["model"] = f"openai:storage-bench-{args.n}"
    cfg["stages"] = {"answer": {"max_tokens": 4 * args.words},
                     "critique_revise": {"rounds": 1, "max_tokens": 4 * args.words}}
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def text_bytes(run_dir: Path) -> tuple[int, int]:
    """(records, UTF-8 bytes of their prompts, answers, critiques and revisions)."""
    from factory.engine.rundir import RunDir

    n = total = 0
    for rec in RunDir.open(run_dir).lineage():
        n += 1
        total += len(rec.prompt.encode())
        for cand in rec.candidates:
            total += len(cand.answer.encode())
            total += sum(len(r.critique.encode()) + len(r.revision.encode()) for r in cand.rounds)
    return n, total


def disk(run_dir: Path) -> dict[str, int]:
    """Bytes on disk (allocated blocks) per file or top-level folder of the run directory."""
    out: dict[str, int] = {}
    for path in sorted(run_dir.rglob("*")):
        if path.is_file():
            top = path.relative_to(run_dir).parts[0]
            out[top] = out.get(top, 0) + path.stat().st_blocks * 512
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--words", type=int, default=150, help="words per answer and revision (critiques: half)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--keep", type=Path, help="leave the run directory here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.words)
        return
    proc = subprocess.Popen([sys.executable, __file__, "--serve", "--words", str(args.words)], stdout=subprocess.PIPE,
                            text=True)
    url = proc.stdout.readline().strip()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            out = args.keep or work / "run"
            os.environ.update(OPENAI_BASE_URL=url + "/v1", OPENAI_API_KEY="sk-bench")
            from factory.config import load_config
            from factory.engine.pipeline import Overrides, Pipeline
            from factory.executors.dispatch import run

            write_prompts(work / "prompts.jsonl", args.n)
            pipe = Pipeline.prepare(load_config(config(work / "bench.yaml", args)),
                                    Overrides(prompts=work / "prompts.jsonl"))
            start = time.monotonic()
            outcome = run(pipe, out, Console(quiet=True))
            wall = time.monotonic() - start
            records, text = text_bytes(out)
            files = disk(out)
            total = sum(files.values())
            print(f"{records} records ({outcome.status}) in {wall:.0f} s; text {text / records:,.0f} B per record")
            print(f"{'file':<22} {'bytes/record':>12} {'x text':>7}")
            for name, size in sorted(files.items(), key=lambda kv: -kv[1]):
                print(f"{name:<22} {size / records:>12,.0f} {size / text:>7.2f}")
            print(f"{'total':<22} {total / records:>12,.0f} {total / text:>7.2f}")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    threading.excepthook = lambda a: None  # the server's threads may see clients vanish at exit
    main()
