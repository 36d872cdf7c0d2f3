"""The training data: a run directory or dataset folder in the export's format (README.md whose YAML
header lists `configs`, Parquet files per H4 split), loaded with `datasets` and shaped for TRL."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from factory.errors import FactoryError, InputError
from factory.export.card import paths
from factory.prompts import Template, load_template

# The columns each objective's trainer reads (everything else is provenance, left out).
COLUMNS = {"sft": ["messages"], "prefs": ["prompt", "chosen", "rejected"], "reward": ["chosen", "rejected"],
           "kto": ["prompt", "completion", "label"]}
HINTS = {"kto": "export with `stages.export.kto: true`", "reward": "export with `stages.export.reward: true`"}


def export_drops(folder: Path, config: str) -> dict[str, int]:
    """The run's export drop reasons for CONFIG's rows (stats.json's `{config}:reason` counts)."""
    try:
        dropped = json.loads((folder / "stats.json").read_text())["stages"]["export"]["dropped"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {k.split(":", 1)[1]: v for k, v in dropped.items() if k.startswith(f"{config}:")}


@dataclass
class TrainData:
    folder: Path
    config: str
    train: object  # datasets.Dataset
    test: object | None
    provenance: dict = field(default_factory=dict)
    note: str | None = None  # said to the user before training (e.g. training on the only split there is)


def card_configs(folder: Path) -> dict[str, list[dict]]:
    """{config name: its data_files} from the YAML header of FOLDER/README.md."""
    readme = folder / "README.md"
    if not folder.is_dir():
        raise FactoryError(f"{folder}: no such folder (DATA is a run directory or a dataset folder)")
    if not readme.is_file():
        raise FactoryError(f"{folder}: not a dataset folder in our format (no README.md with a `configs:` header); "
                           "pass a finished run directory or a `factory merge` folder")
    text = readme.read_text(encoding="utf-8")
    header = text.split("---", 2)[1] if text.startswith("---") and text.count("---") >= 2 else ""
    try:
        meta = yaml.safe_load(header) or {}
    except Exception as e:  # noqa: BLE001 - any error of the YAML parser or its constructors
        raise FactoryError(f"{readme}: unreadable YAML header: {e}") from None
    configs = meta.get("configs") if isinstance(meta, dict) else None
    if not configs:
        raise FactoryError(f"{readme}: its YAML header lists no `configs`: is this a finished run?")
    return {c["config_name"]: c.get("data_files", []) for c in configs if isinstance(c, dict) and "config_name" in c}


def provenance(folder: Path, config: str, files: list[dict]) -> dict:
    """Which data trained the model: the run (from manifest.json), the card's hash and the Parquet files' hash."""
    digest = hashlib.sha256()
    names = sorted(p for entry in files for p in paths(entry))
    for name in names:
        digest.update(name.encode() + b"\0")
        with (folder / name).open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    out = {"path": str(folder.resolve()), "config": config,
           "readme_sha256": hashlib.sha256((folder / "README.md").read_bytes()).hexdigest(),
           "data_sha256": digest.hexdigest(), "files": names}
    manifest = folder / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        out["run"] = {k: m.get(k) for k in ("run_dir", "started", "finished", "status") if k in m}
        if isinstance(m.get("constitution"), dict):
            out["run"]["constitution_sha256"] = m["constitution"].get("sha256")
    return out


def load(folder: str | Path, config: str) -> TrainData:
    """The `train_<config>` split (required, non-empty) and `test_<config>` (if present) of FOLDER."""
    from datasets import load_dataset

    folder = Path(folder)
    configs = card_configs(folder)
    if config not in configs:
        hint = f"; {HINTS[config]}" if config in HINTS else ""
        drops = export_drops(folder, config)
        if drops:
            hint += "; the run's export wrote none: " + ", ".join(f"{n} dropped as {why}" for why, n in drops.items())
        raise FactoryError(f"{folder}: no '{config}' config here (it has: {', '.join(configs) or 'none'}){hint}")
    splits = {f["split"] for f in configs[config]}
    train_split, note = f"train_{config}", None
    if train_split not in splits and f"test_{config}" in splits:
        # A small run can put every prompt in the test split (the split is by prompt hash): train on it.
        train_split = f"test_{config}"
        note = (f"{folder}: the '{config}' config has no train_{config} split, only test_{config} (a small run's "
                f"prompts can all land in the test split); training on test_{config}, with nothing held out")
    elif train_split not in splits:
        raise FactoryError(f"{folder}: the '{config}' config has no train_{config} split "
                           f"(it has: {', '.join(sorted(splits)) or 'none'})")
    missing = [p for f in configs[config] for p in paths(f) if not (folder / p).is_file()]
    if missing:
        raise FactoryError(f"{folder}: files listed in README.md are missing: {', '.join(missing)}")
    ds = load_dataset(str(folder), config)
    train, test = ds[train_split], ds.get(f"test_{config}") if note is None else None
    if train.num_rows == 0:
        raise FactoryError(f"{folder}: {train_split} is empty")
    train, test = (shape(d, config) if d is not None and d.num_rows else None for d in (train, test))
    return TrainData(folder, config, train, test, provenance(folder, config, configs[config]), note)


def load_wrapper(path: str) -> Template:
    """The prompt template of a training config's `template`, checked before any model loads: it may use
    `prompt` only, and no prefill (a prefill would sit between the prompt and the row's own answer)."""
    file = Path(path)
    if not file.is_file():
        raise FactoryError(f"training config: template: {file} is not a file (a prompts/*.yaml template, "
                           "relative to the training YAML)")
    template = load_template(file.parent, file.stem, {"prompt"})
    if template.prefill:
        raise InputError(file, "has a prefill: a training row's answer follows its prompt directly; "
                         "use a template without one", field="prefill")
    return template


def wrap(ds, template: Template):
    """Each conversational column's last user turn sent through TEMPLATE, as the pipeline sends a prompt:
    the template's system text first (unless the row brings its own), then the rendered user turn."""
    def one(turns: list[dict]) -> list[dict]:
        users = [i for i, m in enumerate(turns) if m["role"] == "user"]
        if not users:
            return turns  # a preference row's chosen or rejected reply: no prompt in it
        i = users[-1]
        return [*template.render(turns[:i], prompt=turns[i]["content"]), *turns[i + 1:]]

    columns = [c for c in ("messages", "prompt", "chosen", "rejected") if c in ds.column_names]
    return ds.map(lambda row: {c: one(row[c]) for c in columns})


def shape(ds, config: str):
    """Only the columns the trainer reads. Reward rows: the `margin` column where the pairs were judged
    (unjudged pairs have none: 0 there, which is the plain pairwise loss)."""
    columns = list(COLUMNS[config])
    if config == "reward" and "margin" in ds.column_names and any(m is not None for m in ds["margin"]):
        columns.append("margin")
        ds = ds.map(lambda row: {"margin": 0.0 if row["margin"] is None else float(row["margin"])})
    return ds.select_columns(columns)
