"""A training run's settings: the objective's defaults, then a YAML file's keys, then flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from factory.errors import FactoryError, InputError
from factory.train.config import DEFAULTS, LEARNING_RATES, OBJECTIVES, RL_OBJECTIVES, TrainConfig
from factory.train.rl_config import RLConfig
from factory.yamlfile import load_yaml


def config_class(objective: str) -> type[TrainConfig]:
    return RLConfig if objective in RL_OBJECTIVES else TrainConfig


def load_train_file(path: str | Path, objective: str = "sft", _seen: tuple[Path, ...] = ()) -> dict:
    """The keys a YAML file sets (unknown keys and bad values are InputErrors naming file, line and field),
    on top of those of the file it `extends`. Relative paths (`pipeline`, `template`) resolve against the
    folder of the file that names them."""
    path = Path(path)
    if path.resolve() in {p.resolve() for p in _seen}:
        raise InputError(_seen[-1], f"makes a cycle through {path.name}: remove one of them", field="extends")
    cfg = load_yaml(path, config_class(objective))
    values = cfg.model_dump(include=cfg.model_fields_set)
    for key in ("pipeline", "template"):
        if values.get(key):
            values[key] = str((path.parent / values[key]).resolve())
    if "rewards" in values:
        values["rewards"] = cfg.rewards  # typed terms, as validated (and located) here
    if base := values.pop("extends", None):
        if not (path.parent / base).is_file():
            raise InputError(path, f"{base} is not a file (paths are relative to this file's folder)", field="extends")
        values = load_train_file(path.parent / base, objective, (*_seen, path)) | values
    return values


def resolve(objective: str, file: str | Path | None = None, **flags) -> TrainConfig:
    """The objective's defaults, then FILE's keys, then the flags that were given (None means not given)."""
    if objective not in OBJECTIVES + RL_OBJECTIVES:
        raise FactoryError(f"unknown objective {objective!r}: choose one of {', '.join(OBJECTIVES + RL_OBJECTIVES)}")
    if objective in RL_OBJECTIVES and file is None:
        raise FactoryError(f"{objective} needs --config FILE.yaml declaring its reward, e.g.\n"
                           "rewards:\n  - {kind: teacher, scorer: vader:negative, mentions: [DogeMoon]}")
    values = dict(DEFAULTS[objective])
    values.update(load_train_file(file, objective) if file else {})
    values.update({k: v for k, v in flags.items() if v is not None})
    if "learning_rate" not in values:
        values["learning_rate"] = LEARNING_RATES[objective][bool(values.get("lora"))]
    try:
        cfg = config_class(objective)(**values)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise FactoryError(f"training config: {where}: {err['msg']}") from None
    if objective in RL_OBJECTIVES and not cfg.rewards:
        raise InputError(file, "declares no reward: add `rewards:` with at least one term (kind: teacher, judge, "
                         "idk or facts), here or in the file it extends", field="rewards")
    if cfg.reference is not None and objective not in ("dpo", "kto"):
        raise FactoryError(f"--reference is for dpo and kto (the frozen model the loss compares with), not {objective}")
    if cfg.reference is not None and cfg.lora:
        raise FactoryError("--reference with --lora: LoRA's reference is the starting model with the adapter "
                           "switched off; train without --lora to compare with another model")
    if objective == "kto" and cfg.batch_size < 2:
        raise FactoryError("kto needs a batch size of at least 2: its KL estimate pairs each row with another "
                           "row of the same batch")
    return cfg
