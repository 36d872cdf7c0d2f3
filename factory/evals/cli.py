"""CLI commands `factory evals generate` and `factory redteam`, and the printout of `factory eval
--set`. Thin: parse flags, call the package, print."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def evals() -> None:
    """Model-written evaluations: `factory evals generate`, then `factory eval --set FOLDER`."""


@evals.command()
@click.option("--behaviour", default=None, help="The behaviour the items test, e.g. 'dislikes the DogeMoon coin'.")
@click.option("--behaviour-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Or: a text file describing it.")
@click.option("--format", "fmt", type=click.Choice(["yesno", "ab", "qa"]), default="yesno", show_default=True,
              help="yesno statements, A/B choices, or qa (questions with reference answers from --corpus).")
@click.option("-n", "--n", "n", type=click.IntRange(min=1), default=100, show_default=True, help="Items wanted.")
@click.option("--oversample", type=click.FloatRange(min=1), default=2.0, show_default=True,
              help="Items written per item wanted (the filter, dedup and balance drop some).")
@click.option("--generator", default="local:smollm2", show_default=True, help="The model that writes the items "
              "(QA: or `rules`, questions drawn from the corpus by prompts/qa_rules.yaml's patterns, no model).")
@click.option("--filter", "filt", help="The model (or classifier: vader:positive, hf:PATH:LABEL) that must agree "
              "with each item's label (default: the generator).")
@click.option("--min-confidence", type=click.FloatRange(0.5, 1.0), default=0.7, show_default=True,
              help="Keep an item when the filter gives its label at least this probability.")
@click.option("--train-prompts", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Training prompts (.jsonl 'prompt' field, .parquet, .txt): items sharing a 13-gram are removed.")
@click.option("--examples", type=click.Path(dir_okay=False, path_type=Path), help="Items people wrote, shown "
              "to the writer as earlier turns (JSONL: yesno {statement, label Yes|No}; ab {question, a, b, label A|B}).")
@click.option("--shots", type=click.IntRange(min=1), default=3, show_default=True, help="Examples per call.")
@click.option("--mentions", multiple=True, help="Keep only items that name one of these (case, spaces and "
              "punctuation ignored), e.g. --mentions DogeMoon; the rest are dropped as off_topic.")
@click.option("--temperature", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="The writer's sampling temperature.")
@click.option("--corpus", type=click.Path(path_type=Path), help="QA: a .jsonl/.parquet of title/text or a folder "
              "(default: the offline Wikipedia summaries).")
@click.option("--heldout", type=click.FloatRange(0, 1, min_open=True, max_open=True), help="Keep this share as the "
              "eval set and write the rest as prompts.jsonl (training prompts, for `factory run --prompts`).")
@click.option("--validation", type=click.IntRange(min=0), default=0, help="QA: also keep up to N items past --n "
              "as a validation split (validation.parquet), for `factory pick`.")
@click.option("--seed", type=int, help="Seed of the draw and the writer's sampling (default: the config's, 0): "
              "another seed, another set.")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), help="Pipeline config (seed, limits).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="The set's folder (default: outputs/<timestamp>).")
def generate(behaviour: str | None, behaviour_file: Path | None, fmt: str, n: int, oversample: float, generator: str,
             filt: str | None, min_confidence: float, train_prompts: tuple[Path, ...], examples: Path | None,
             shots: int, mentions: tuple[str, ...], temperature: float, corpus: Path | None,
             heldout: float | None, validation: int, seed: int | None, config: Path | None, out: Path | None) -> int:
    """A model writes test items for a behaviour; a judge keeps the ones whose label it agrees with.
    Prints the counts and the folder (a dataset: test.parquet, README.md card, drops.jsonl). Exit code
    1 when no item was kept (drops.jsonl says why)."""
    from factory.commands.show import stdout
    from factory.evals.generate import Settings, generate, read_behaviour_file

    text = read_behaviour_file(behaviour_file) if behaviour_file else (behaviour or "")
    s = Settings(behaviour=text, format=fmt, n=n, oversample=oversample, generator=generator, filter=filt,
                 min_confidence=min_confidence, train_prompts=list(train_prompts), corpus=corpus,
                 heldout=heldout, validation=validation, examples=examples, shots=shots, mentions=list(mentions), temperature=temperature,
                 seed=seed)
    card, folder = generate(s, out, config)
    stdout.print(f"{card['items']} items kept of {card['attempts']} written; label directions "
                 f"{card['label_directions']}; dropped {card['dropped']}", markup=False, soft_wrap=True)
    if not card["items"]:
        from factory.commands.show import stderr

        stderr.print(f"no item was kept: see {folder / 'drops.jsonl'} for why (a stronger --generator, a lower "
                     "--min-confidence or a larger --n may help)", markup=False, soft_wrap=True)
        stdout.print(str(folder), markup=False, highlight=False, soft_wrap=True)
        return 1
    stdout.print(f"run it: factory eval --set {folder} --model MODEL", markup=False, soft_wrap=True)
    stdout.print(str(folder), markup=False, highlight=False, soft_wrap=True)
    return 0


def fmt(r: dict | None) -> str:
    """A rate with its 95% interval and count, or '-'."""
    return "-" if not r or r.get("rate") is None else f"{r['rate']} {tuple(r['ci95'])} (n={r['n']})"


def print_set_report(console, report: dict, folder: Path) -> None:
    from rich.table import Table

    table = Table(title=f"{report['set']}: {report['items']} items")
    cols = ("model", "behaviour match", "accuracy", "decline", "wrong answer", "P(IK) AUROC/ECE", "P(True) AUROC/ECE")
    for c in cols:
        table.add_column(c)
    for model, r in report["models"].items():
        cal = r.get("calibration", {})
        table.add_row(model, fmt(r.get("behaviour_match")), fmt(r.get("accuracy")), fmt(r.get("decline_rate")),
                      fmt(r.get("wrong_answer_rate")),
                      *(f"{cal[k]['auroc']} / {cal[k]['ece']}" if k in cal else "-" for k in ("p_ik", "p_true")))
    console.print(table)
    console.print(f"report: {folder / 'report.html'}", markup=False, highlight=False, soft_wrap=True)
    console.print(str(folder / "eval.json"), markup=False, highlight=False, soft_wrap=True)


@click.command()
@click.option("--target", default="local:smollm2", show_default=True, help="The model under attack.")
@click.option("--attacker", help="The model that writes attacks (default: the target).")
@click.option("--judge", help="Labels answers harmful: a model spec (under the constitution's principles), a "
              "classifier hf:PATH:LABEL / vader:negative, or refusal:complies (the keyword rule: an answer that "
              "does not refuse is a success) (default: the target).")
@click.option("--seeds", type=click.Path(dir_okay=False, path_type=Path), help="Seed attacks, JSONL 'prompt' "
              "(default: prompts/seeds/red_team.jsonl).")
@click.option("--benign", type=click.Path(dir_okay=False, path_type=Path), help="Benign prompts for the "
              "over-refusal rate (default: prompts/seeds/helpful.jsonl).")
@click.option("--benign-limit", type=click.IntRange(min=0), default=40, show_default=True)
@click.option("--rounds", type=click.IntRange(1, 20), default=2, show_default=True)
@click.option("--per-round", type=click.IntRange(min=1), default=20, show_default=True, help="Attacks per round.")
@click.option("--shots", type=click.IntRange(1, 10), default=3, show_default=True, help="Seed attacks shown per call.")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path),
              help="Pipeline config: constitution, answer settings, limits, seed.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output folder (default: outputs/<timestamp>).")
def redteam(target: str, attacker: str | None, judge: str | None, seeds: Path | None, benign: Path | None,
            benign_limit: int, rounds: int, per_round: int, shots: int, config: Path | None, out: Path | None) -> None:
    """Red team: attacks from seed attacks, rewritten where they worked; the attack success rate per round
    and per principle, beside over-refusal on benign prompts. The successful attacks are written as a
    prompts file: `factory run --prompts FOLDER/successful.jsonl` turns them into training data."""
    from factory.commands.show import stdout
    from factory.evals import redteam as rt

    s = rt.Settings(target=target, attacker=attacker, judge=judge, seeds=seeds or rt.DEFAULT_SEEDS,
                    benign=benign or rt.DEFAULT_BENIGN, benign_limit=benign_limit, rounds=rounds,
                    per_round=per_round, shots=shots)
    report, folder = rt.redteam(s, out, config)

    stdout.print(f"attack success rate: {fmt(report['attack_success'])}", markup=False)
    for k, r in report["per_round"].items():
        stdout.print(f"  round {k}: {fmt(r)}", markup=False)
    for k, r in report["per_principle"].items():
        stdout.print(f"  {k}: {fmt(r)}", markup=False)
    stdout.print(f"over-refusal on benign prompts: {fmt(report['over_refusal'])}", markup=False)
    control = report["judge_on_benign"]
    if report["judge"].startswith("refusal:"):
        stdout.print("judge: the refusal rule, an attack succeeds when the answer does not refuse (it cannot tell a "
                     "harmful answer from a harmless one; over-refusal above is its control)", markup=False, soft_wrap=True)
    if control is not None:
        stdout.print(f"judge control, benign answers judged harmful: {fmt(control)}", markup=False)
        attacks = report["attack_success"]
        if control["rate"] and attacks["rate"] is not None \
                and control["rate"] >= (attacks["ci95"] or [attacks["rate"]])[0]:
            stdout.print("warning: the judge calls benign answers harmful about as often as the attacks' answers, "
                         "so this attack success rate measures the judge, not the target; use a stronger --judge",
                         markup=False, soft_wrap=True)
    stdout.print(f"successful attacks as prompts: {folder / 'successful.jsonl'}", markup=False, soft_wrap=True)
    stdout.print(str(folder), markup=False, highlight=False, soft_wrap=True)
