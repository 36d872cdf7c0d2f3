"""`factory train`: fine-tune a local model on the factory's datasets with TRL (SFT, DPO, reward, KTO).

    config.py    TrainConfig: defaults per objective, a YAML file and flags on top
    data.py      a run directory or dataset folder -> the train and test splits TRL reads
    model.py     local model specs -> folders, tokenizer, policy, reward model, LoRA config
    progress.py  the callback that prints progress and writes metrics.jsonl
    run.py       the trainer per objective, saving, train_meta.json
"""

import os

# TRL pings the Hub from every trainer unless told not to (read when huggingface_hub is imported).
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from factory.train.config import DATA_CONFIG, OBJECTIVES, TrainConfig
from factory.train.run import is_main_process, train
from factory.train.settings import resolve

__all__ = ["DATA_CONFIG", "OBJECTIVES", "TrainConfig", "is_main_process", "resolve", "train"]
