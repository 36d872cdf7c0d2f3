"""Hostile inputs for the fuzz test (tests/test_fuzz.py) and its timing (bench/fuzz_inputs.py):
prompts files, pipeline configs and constitutions made of random bytes, truncations, deep nesting,
huge values, every YAML tag and alias trick, bad characters and encodings. Seeded: the same seed
gives the same cases."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSTITUTION = (ROOT / "constitutions" / "harmless.yaml").read_text()
PROMPTS = "".join(json.dumps({"prompt": p, "topic": i}) + "\n"
                  for i, p in enumerate(["How do I bake bread?", "Write a haiku about rain.", "What is a lever?"]))


def billion_laughs(levels: int = 9) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


YAML_TRICKS = [
    billion_laughs(), billion_laughs(12), "a: &a [*a]\n", "a: &a {b: *a}\n", "a: *undefined\n",
    "a: &x 1\n" + "".join(f"k{i}: *x\n" for i in range(3000)),  # many aliases
    "base: &b {name: x}\n<<: [*b, *b, *b]\n", "<<: *nothing\n", "? &k [1, 2]\n: *k\n",
    "name: !!python/object/apply:os.system ['true']\n", "name: !!python/name:os.system\n",
    "name: !!python/object:collections.OrderedDict {}\n", "name: !!binary '@@not base64@@'\n",
    "name: !!timestamp 2024-13-45\n", "name: !!int 0xZZ\n", "name: !!float nan\n", "name: !!bool maybe\n",
    "name: !!set {a, b}\n", "name: !!omap [a: 1, a: 2]\n", "name: !!pairs [a]\n", "name: !custom x\n",
    "!!map {name: x}\n", "!!seq [name]\n", "!!str name\n", "%YAML 1.1\n%TAG ! tag:evil,2000:\n--- !x {name: x}\n",
    "%YAML 9.9\n--- {name: x}\n", "name: x\n---\nname: y\n", "---\n...\n", "", "~\n", "[]\n", "'just a string'\n",
    "name: 'unterminated\n", 'name: "\\ud800"\n', 'name: "\\x00"\n', 'name: "\\e[31m"\n', "name:\tx\n",
    "name: x\nname: y\n", "? [a, b]\n: 1\n", "{" * 200 + "}" * 200, "[" * 5000, "a:\n" + "".join(" " * i + "- \n" for i in range(1, 2000)),
    "name: " + "9" * 10000 + "\n", "version: " + "1" * 5000 + "\n", "\ufeffname: x\n", "name: x\r\nversion: 1\r\n",
]

JSON_TRICKS = [
    "[" * 100000 + "]" * 100000, '{"prompt": ' + "[" * 5000 + "]" * 5000 + "}", '{"prompt": ' + "9" * 5000 + "}",
    '{"prompt": "x", "n": ' + "9" * 5000 + "}", '{"prompt": NaN}', '{"prompt": "x"', '"just a string"', "null",
    '{"prompt": "\\ud800"}', '{"prompt": "a\\u0000b"}', '{"prompt": "ok", "meta": {"k": "\\u001b"}}',
    '{"prompt": ""}', '{"prompt": "   "}', '{"prompt": 5}', '{"prompt": ["x"]}', '{"prompt": "x", "prompt": 3}',
    '{"prompt": "' + "x" * 300_000 + '"}', "\ufeff" + '{"prompt": "x"}', '{"prompt": "x"}\x00',
]


def _mutations(valid: str, rng: random.Random, n: int) -> Iterator[str | bytes]:
    data = valid.encode()
    for _ in range(n):
        kind = rng.randrange(4)
        if kind == 0:  # random bytes
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600)))
        elif kind == 1:  # a truncation
            yield data[: rng.randrange(len(data))]
        elif kind == 2:  # a few bytes flipped
            b = bytearray(data)
            for _ in range(rng.randrange(1, 6)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            yield bytes(b)
        else:  # a slice of the file repeated into a huge one, or spliced in the middle
            cut = rng.randrange(len(data))
            yield data[:cut] + data[cut: cut + rng.randrange(1, 200)] * rng.randrange(1, 50) + data[cut:]


def constitutions(seed: int = 0, n: int = 30) -> Iterator[str | bytes]:
    """Constitution files: every YAML trick, spliced into a valid one too, and random mutations."""
    yield from YAML_TRICKS
    for trick in YAML_TRICKS[:12]:
        yield CONSTITUTION + "\nextra: " + trick.replace("\n", "\n  ")
    big = "principles:\n  - id: big\n    critique: '" + "x" * 30_000 + "'\n    revision: r\n"
    yield CONSTITUTION.split("principles:")[0] + big
    yield from _mutations(CONSTITUTION, random.Random(seed), n)


def configs(constitution: Path, seed: int = 0, n: int = 30) -> Iterator[str | bytes]:
    """Pipeline configs: the tricks, odd values for known keys, random mutations of a valid one."""
    valid = (f"name: fuzz\nconstitution: {constitution}\nprompts_dir: {ROOT / 'prompts'}\nconcurrency: 4\n"
             "stages:\n  answer:\n    max_tokens: 32\n  critique_revise:\n    max_tokens: 32\n")
    yield from YAML_TRICKS
    for key, value in [("concurrency", "-1"), ("concurrency", "1e999"), ("seed", "9" * 5000), ("constitution", "/"),
                       ("constitution", "/dev/zero"), ("constitution", "/nonexistent.yaml"), ("prompts_dir", "/nonexistent"),
                       ("model", "nosuch:model"), ("model", "'\\x00'"), ("max_cost", "-5"), ("watchdog_s", ".nan"),
                       ("stages", "{answer: {candidates: 100000}}"), ("limits", "{x: {rpm: -1}}"), ("unknown", "1")]:
        yield valid + f"{key}: {value}\n"
    yield from _mutations(valid, random.Random(seed + 1), n)


def prompts_files(seed: int = 0, n: int = 30) -> Iterator[str | bytes]:
    """Prompts files: the JSON tricks (each alone and after a valid line), random mutations."""
    for trick in JSON_TRICKS:
        yield trick + "\n"
        yield PROMPTS + trick + "\n"
    yield b'{"prompt": "\xff\xfe"}\n'
    yield from _mutations(PROMPTS, random.Random(seed + 2), n)


def run_cli(*args: object) -> tuple[int, str, float]:
    """`factory ARGS` through its real entry point, in this process: (exit code, stderr, seconds)."""
    import contextlib
    import io
    import sys
    import time

    from factory import cli

    err, argv = io.StringIO(), sys.argv
    sys.argv = ["factory", *map(str, args)]
    start = time.perf_counter()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            cli.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
    return code, err.getvalue(), time.perf_counter() - start


def cases(folder: Path, seed: int = 0, n: int = 30) -> Iterator[tuple[str, list[object], Path]]:
    """(kind, factory arguments, run directory) for every hostile input, written under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    good_prompts = folder / "good.jsonl"
    good_prompts.write_text(PROMPTS)
    good_constitution = folder / "good-constitution.yaml"
    good_constitution.write_text(CONSTITUTION)
    base = ["--model", "openai:fuzz", "--limit", "2", "--concurrency", "2"]
    sources = [("constitution", constitutions(seed, n)), ("config", configs(good_constitution, seed, n)),
               ("prompts", prompts_files(seed, n))]
    for kind, contents in sources:
        for i, content in enumerate(contents):
            path = folder / f"{kind}-{i}.{'jsonl' if kind == 'prompts' else 'yaml'}"
            path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
            out = folder / f"run-{kind}-{i}"
            if kind == "constitution":
                config = folder / f"config-{i}.yaml"
                config.write_text(f"name: fuzz\nconstitution: {path}\nprompts_dir: {ROOT / 'prompts'}\n")
                yield kind, ["run", config, "--prompts", good_prompts, *base, "--out", out], out
            elif kind == "config":
                yield kind, ["run", path, "--prompts", good_prompts, *base, "--out", out], out
            else:
                config = folder / "config.yaml"
                config.write_text(f"name: fuzz\nconstitution: {good_constitution}\nprompts_dir: {ROOT / 'prompts'}\n")
                yield kind, ["run", config, "--prompts", path, *base, "--out", out], out
