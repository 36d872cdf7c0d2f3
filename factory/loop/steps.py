"""The rounds of a loop and its manifest. Round k: `generate` (a `factory run` whose answering model
is round k-1's policy; round 1: the base), optionally `mix` (earlier rounds' training rows added),
`train`, then `eval` against round 0 and `eval_prev` against round k-1 (from round 2). Each step is
the same function its command runs, called here, not shelled out.

loop.json records each step's status and seconds. A loop killed at any moment continues with
`--resume` at the step where it stopped: a run resumes as `factory run --resume` does, an RL training
from its last checkpoint; any other step that had not finished starts again. Every model call goes
through one shared cache (DIR/cache), so nothing is paid for twice.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from pathlib import Path

import yaml
from rich.console import Console

from factory.config import PipelineConfig
from factory.engine.pipeline import file_digest
from factory.engine.rundir import now, write_json
from factory.engine.state import lock_run_dir
from factory.errors import FactoryError, StoppedAtBudget
from factory.loop.config import LoopConfig, load_loop
from factory.yamlfile import read_layers

MANIFEST = "loop.json"


def round_dir(out: Path, k: int) -> Path:
    return out / f"round-{k}"


def policy(out: Path, cfg: LoopConfig, k: int) -> str:
    """The policy after round k (round 0: the base model)."""
    return cfg.base if k == 0 else f"local:{(round_dir(out, k) / 'train').resolve()}"


def round_pipeline(cfg: LoopConfig, out: Path, k: int) -> PipelineConfig:
    """Round k's pipeline: every stage answers with round k-1's policy; the judge stays the pipeline's
    (fixed) or is that policy too (self-rewarding). All calls go through the loop's shared cache."""
    p = cfg.pipeline.model_copy(deep=True)
    p.model = policy(out, cfg, k - 1)
    for stage in p.stages.sampling():
        stage.model = None
    if p.stages.judge is not None and cfg.loop.judge == "fixed":
        p.stages.judge.model = cfg.judge_spec
    p.cache_dir = str((out / "cache").resolve())
    return p


def steps(cfg: LoopConfig, rounds: int) -> list[tuple[int, str]]:
    out = []
    for k in range(1, rounds + 1):
        out += [(k, "generate")] + ([(k, "mix")] if cfg.loop.mix > 0 and k > 1 else []) + [(k, "train"), (k, "eval")]
        out += [(k, "eval_prev")] if k > 1 else []
    return out


def run_loop(config: Path | None, rounds: int | None, out: Path, console: Console, *, resume: bool = False,
             max_cost: float | None = None) -> dict:
    """Run (or, with `resume`, continue) the loop in OUT; returns the manifest. `max_cost` (USD), when
    given, replaces the pipeline's for each round's run (so a loop stopped at its budget continues with
    a larger one). One process at a time works on OUT."""
    out, wall = Path(out), time.monotonic()
    if resume:
        if config is not None or rounds is not None:
            raise FactoryError("--resume continues the loop exactly as it started; drop CONFIG and --rounds")
        manifest = _read_manifest(out)
        config = Path(manifest["config"])
        if not config.is_file() or config_digest(config) != manifest["config_sha256"]:
            raise FactoryError(f"{config} changed (or is gone) since the loop started, so resuming would mix two "
                               f"configs. Restore it (a copy is in {out / 'config.yaml'}), or start a new loop")
        cfg = load_loop(config, manifest["rounds"])
        lock = lock_run_dir(out)
    else:
        if config is None or rounds is None:
            raise FactoryError("factory loop needs CONFIG and --rounds K (or --resume DIR)")
        cfg = load_loop(config, rounds)  # every input check, before any model loads or any folder is made
        if out.exists() and any(out.iterdir()):
            raise FactoryError(f"{out}: already exists and is not empty; choose another --out (or --resume {out})")
        out.mkdir(parents=True, exist_ok=True)
        lock = lock_run_dir(out)
        _record(Path(config), out / "config.yaml")
        manifest = {"config": str(Path(config).resolve()), "config_sha256": config_digest(config), "rounds": rounds,
                    "base": cfg.base, "loop": cfg.loop.model_dump(), "started": now(), "status": "running", "steps": {}}
        write_json(out / MANIFEST, manifest)
    if max_cost is not None:
        cfg.pipeline.max_cost = max_cost
    manifest["status"], manifest["resumed"] = "running", manifest.get("resumed", -1) + 1
    before = manifest.get("wall_seconds", 0)

    def elapsed() -> float:
        """The loop's own wall time, every process that worked on it (up to its last finished step)
        together; the config checks count, this process's start-up does not."""
        return round(before + time.monotonic() - wall, 3)

    for k, step in steps(cfg, manifest["rounds"]):
        key = f"{k}.{step}"
        if manifest["steps"].get(key, {}).get("status") == "done":
            continue
        was_started = key in manifest["steps"]
        manifest["steps"][key] = {"status": "running", "started": now()}
        write_json(out / MANIFEST, manifest)
        console.print(f"[bold]round {k}[/bold]: {step}{' (resumed)' if was_started else ''}")
        t0 = time.monotonic()
        try:
            STEPS[step](cfg, out, k, console, was_started)
        except StoppedAtBudget:
            manifest["status"] = "stopped_at_budget"
            write_json(out / MANIFEST, manifest)
            raise
        manifest["steps"][key] = {"status": "done", "seconds": round(time.monotonic() - t0, 3), "finished": now()}
        manifest["wall_seconds"] = elapsed()
        write_json(out / MANIFEST, manifest)
    from factory.loop.table import write_loop_report

    manifest |= {"status": "complete", "finished": now(), "wall_seconds": elapsed()}
    write_json(out / MANIFEST, manifest)
    write_loop_report(out)
    lock.close()
    return manifest


def config_digest(config: Path) -> str:
    """The config file's digest; one that `extends` others: a digest of every file's, nearest first."""
    chain = [p for p, _ in read_layers(Path(config))[0]]
    if len(chain) == 1:
        return file_digest(chain[0])
    return hashlib.sha256("\n".join(file_digest(p) for p in chain).encode()).hexdigest()


def _record(config: Path, target: Path) -> None:
    """The config, for the record: the file itself, or (one that `extends` others) all of them merged."""
    layers, data = read_layers(config)
    if len(layers) == 1:
        shutil.copyfile(config, target)
        return
    names = ", ".join(p.name for p, _ in layers[1:])
    target.write_text(f"# {config.resolve()} merged with what it extends ({names}); relative paths resolve "
                      f"against {config.resolve().parent}\n" + yaml.safe_dump(data, sort_keys=False))


def _read_manifest(out: Path) -> dict:
    path = out / MANIFEST
    if not path.is_file():
        raise FactoryError(f"{out}: not a loop directory (no {MANIFEST})")
    return json.loads(path.read_text())


def _fresh(folder: Path) -> Path:
    """A step that had not finished starts again in an empty folder (its calls are in the shared cache)."""
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def _generate(cfg: LoopConfig, out: Path, k: int, console: Console, was_started: bool) -> None:
    from factory.engine.pipeline import Overrides, Pipeline
    from factory.executors.dispatch import resume, run

    run_dir = round_dir(out, k) / "run"
    if was_started and (run_dir / "manifest.json").is_file():
        outcome = resume(run_dir, console, Overrides(cache_dir=out / "cache", max_cost=cfg.pipeline.max_cost))
    else:
        outcome = run(Pipeline.prepare(round_pipeline(cfg, out, k), Overrides()), _fresh(run_dir), console)
    if outcome.status == "stopped_at_budget":
        raise StoppedAtBudget(f"round {k} stopped before passing its budget; continue with a larger budget: "
                              f"factory loop --resume {out} --max-cost USD")


def _data_dir(cfg: LoopConfig, out: Path, k: int) -> Path:
    return round_dir(out, k) / ("data" if cfg.loop.mix > 0 and k > 1 else "run")


def _mix(cfg: LoopConfig, out: Path, k: int, console: Console, was_started: bool) -> None:
    """A dataset folder: round k's export, its training split joined by a `mix` share of each earlier
    round's training rows (drawn with the pipeline's seed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from factory.export.card import paths
    from factory.train import DATA_CONFIG
    from factory.train.data import card_configs

    config = DATA_CONFIG.get(cfg.loop.objective, "prefs")

    def train_files(folder: Path) -> list[Path]:
        entries = [f for f in card_configs(folder).get(config, []) if f["split"].startswith("train")]
        if len(entries) != 1:
            raise FactoryError(f"{folder}: expected one train split for '{config}', found {len(entries)}")
        return [folder / p for p in paths(entries[0])]

    def train_table(folder: Path) -> pa.Table:
        return pa.concat_tables([pq.read_table(f) for f in train_files(folder)])

    src, target = round_dir(out, k) / "run", _fresh(round_dir(out, k) / "data")
    shutil.copytree(src, target, ignore=shutil.ignore_patterns("calls.sqlite*", "*.jsonl", "cache"))
    tables = [train_table(target)]
    for j in range(1, k):
        earlier = train_table(round_dir(out, j) / "run")
        rows = random.Random(f"{cfg.pipeline.seed}|mix|{k}|{j}").sample(range(earlier.num_rows),
                                                                        round(cfg.loop.mix * earlier.num_rows))
        tables.append(earlier.take(pa.array(sorted(rows), type=pa.int64())))
    mixed = pa.concat_tables(tables, promote_options="default")
    # A split in several files stays so, its rows spread evenly: every part keeps a row (`datasets` cannot
    # read a Parquet file of none), since each part had one and mixing only adds rows.
    files = train_files(target)
    ends = [i * mixed.num_rows // len(files) for i in range(len(files) + 1)]
    for i, part in enumerate(files):
        pq.write_table(mixed.slice(ends[i], ends[i + 1] - ends[i]), part)
    console.print(f"mixed {mixed.num_rows - tables[0].num_rows} earlier row(s) into {tables[0].num_rows}")


def _train(cfg: LoopConfig, out: Path, k: int, console: Console, was_started: bool) -> None:
    from factory.train import resolve, train

    lp, target = cfg.loop, round_dir(out, k) / "train"
    start = policy(out, cfg, k - 1) if lp.start_from == "previous" else cfg.base
    train_cfg = resolve(lp.objective, cfg.pipeline.path(lp.train_config) if lp.train_config else None)
    if lp.objective in ("grpo", "rloo"):
        from factory.train.rl import last_checkpoint, train_rl

        if was_started and target.is_dir() and last_checkpoint(target) is not None:
            train_rl(lp.objective, None, start, target, None, resume=True, console=console)
        else:
            train_rl(lp.objective, _data_dir(cfg, out, k), start, _fresh(target), train_cfg, console=console)
        return
    train(lp.objective, _data_dir(cfg, out, k), start, _fresh(target), train_cfg, console)


def _evaluate(cfg: LoopConfig, out: Path, k: int, against: int, name: str) -> None:
    from factory.commands.evaluate import evaluate

    evaluate(policy(out, cfg, k), policy(out, cfg, against), cfg.pipeline.path(cfg.loop.held_out), cfg.eval_judge,
             _fresh(round_dir(out, k) / name), config=round_pipeline(cfg, out, k), limit=cfg.loop.eval_limit,
             samples=cfg.loop.eval_samples, cache_dir=out / "cache")


STEPS = {
    "generate": _generate,
    "mix": _mix,
    "train": _train,
    "eval": lambda cfg, out, k, console, was: _evaluate(cfg, out, k, 0, "eval"),
    "eval_prev": lambda cfg, out, k, console, was: _evaluate(cfg, out, k, k - 1, "eval_prev"),
}
