"""The model to train: a local Hugging Face folder named by a spec (`local:smollm2`, `local:PATH`)."""

from __future__ import annotations

from pathlib import Path

from factory.errors import FactoryError
from factory.models.spec import ModelSpec
from factory.train.config import TrainConfig


def model_folder(spec: str, flag: str = "--model") -> Path:
    """The folder a `local:` spec names (the embedded model is converted once, then cached); FLAG names the
    option it came from in errors."""
    parsed = ModelSpec.parse(spec, known=False) if ":" in spec else None
    kind, name = (parsed.provider, parsed.name) if parsed else ("", "")
    if kind != "local":
        raise FactoryError(f"{flag} {spec!r}: training needs local weights: local:smollm2 (the embedded model) "
                           "or local:PATH (a Hugging Face model folder)")
    if name == "smollm2":
        from factory.models.smollm2 import ensure_smollm2

        return ensure_smollm2()
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise FactoryError(f"{spec}: {path} is not a Hugging Face model folder (no config.json there)")
    return path


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.chat_template:
        raise FactoryError(f"{path}: the tokenizer has no chat template; our datasets are conversations")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(path: Path):
    """A causal LM in fp32 (bf16 training autocasts; the optimiser keeps fp32 weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def load_reward(path: Path, tokenizer):
    """A one-logit sequence classifier on the causal LM's body (its `score` head starts random)."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # "newly initialized: score.weight" is the point here, not news
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    finally:
        logging.set_verbosity(verbosity)
    model.config.pad_token_id = tokenizer.pad_token_id  # it finds each sequence's last token by the pad id
    return model


def lora_config(cfg: TrainConfig, objective: str):
    try:
        from peft import LoraConfig
    except ImportError:
        raise FactoryError("--lora needs the `peft` package: pip install peft") from None
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_target_modules,
                      task_type="SEQ_CLS" if objective == "reward" else "CAUSAL_LM")  # SEQ_CLS trains the head too
