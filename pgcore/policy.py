"""Loading, saving and converting policies: a Hugging Face causal LM, optionally with LoRA.

A :class:`Policy` is the model plus its tokenizer. With LoRA (Hu et al. 2021, "LoRA:
Low-Rank Adaptation of Large Language Models") only the adapter is trained and saved, and
the reference policy is the same module with the adapter disabled, so it costs no memory.
With full fine-tuning the reference is a frozen deep copy made at load time.

Weights are written atomically (temporary folder, fsync, ``os.replace``) and carry a
SHA-256 checksum that loading verifies.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pgcore.atomic import atomic_directory as _atomic_directory
from pgcore.config import PGConfig
from pgcore.critic import CRITIC_FILE, Critic

CHECKSUM_FILE = "pgcore_checksum.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


class ChecksumError(ValueError):
    """Weights on disk do not match the SHA-256 recorded for them."""


@dataclass
class Policy:
    """A causal LM with its tokenizer.

    Attributes:
        model: the ``nn.Module`` (a ``peft.PeftModel`` when LoRA is used).
        tokenizer: its tokenizer; a pad token is always set and ``padding_side == "left"``.
        base_path: folder of the base model the policy was built on.
        adapter_path: folder the LoRA adapter (or full fine-tuned weights) came from, if any.
        ref_model: frozen copy used as the reference under full fine-tuning; ``None`` for
            LoRA, whose reference is the adapter disabled.
        critic: the value baseline (:class:`pgcore.critic.Critic`) trained with this policy,
            or ``None``; saved beside the weights and loaded with them.
    """

    model: nn.Module
    tokenizer: object
    base_path: Path
    adapter_path: Path | None = None
    ref_model: nn.Module | None = None
    critic: Critic | None = None

    @property
    def is_lora(self) -> bool:
        """True when ``model`` is a peft model (only the adapter is trained and saved)."""
        return _is_peft(self.model)

    @property
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters with ``requires_grad``; empty for a policy loaded with ``trainable=False``."""
        return [p for p in self.model.parameters() if p.requires_grad]


def _is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a hard requirement in practice
        return False
    return isinstance(model, PeftModel)


@contextlib.contextmanager
def reference_model(policy: Policy) -> Iterator[nn.Module]:
    """Yield the module that computes the reference policy pi_ref.

    LoRA: ``policy.model`` itself inside peft's ``disable_adapter()`` context, i.e. the base
    weights. Full fine-tuning: the frozen copy made at load time (``policy.ref_model``).
    Without either (a policy loaded with ``trainable=False`` and no adapter), the policy is
    its own reference.
    """
    if policy.is_lora:
        with policy.model.disable_adapter():
            yield policy.model
    elif policy.ref_model is not None:
        yield policy.ref_model
    else:
        yield policy.model


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    # peft 0.21 asks transformers 5 a deprecated question; nothing for us to fix.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def load_tokenizer(path: str | os.PathLike, **kwargs):
    """Load a tokenizer and make it ready for batched sampling.

    A tokenizer without a pad token gets its EOS token as pad token; padding is on the left
    so every prompt's last token sits in the last column.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer at {path} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_policy(
    base_path: str | os.PathLike,
    adapter_path: str | os.PathLike | None = None,
    *,
    config: PGConfig | None = None,
    trainable: bool = False,
    expected_sha256: str | None = None,
    reference_path: str | os.PathLike | None = None,
    attn_implementation: str = "eager",
    device: str | torch.device | None = None,
) -> Policy:
    """Load a local Hugging Face causal LM as a :class:`Policy`, in float32, in eval mode.

    Args:
        base_path: folder with ``config.json`` and weights (never a hub id: nothing is
            downloaded).
        adapter_path: a version saved by :func:`save_policy_atomic`: a LoRA adapter folder
            (``adapter_config.json``) loaded on top of ``base_path``, or a full fine-tuned
            model folder loaded instead of ``base_path``'s weights.
        config: decides LoRA vs full fine-tuning and the LoRA shape when ``trainable``;
            defaults to ``PGConfig()``.
        trainable: make the policy ready for :func:`pgcore.trainer.update`. With LoRA a
            fresh adapter is added (seeded by ``config.seed``) unless ``adapter_path`` gives
            one, which is then loaded trainable. Full fine-tuning keeps a frozen deep copy as
            the reference. With ``trainable=False`` every parameter has
            ``requires_grad=False``.
        expected_sha256: checksum of ``adapter_path``'s weights (as :func:`weights_sha256`);
            when ``None`` the checksum recorded in the folder, if any, is checked instead.
        reference_path: full fine-tuning only: load the reference from this folder (e.g.
            the original base) instead of copying the weights just loaded.
        attn_implementation: transformers attention kernel. "eager" (plain matmuls) by
            default: at RLHF lengths on CPU its backward is ~1.8x faster than the SDPA flash
            kernel's (profiled in ``bench/train_step.py``), and fp32 results are identical.
        device: where the model (and a full fine-tune's reference) is put, e.g.
            :func:`pgcore.precision.select_device`; None: the CPU. Weights are read on the
            CPU and a fresh adapter is initialised there first, so a folder saved from any
            device loads anywhere and one seed gives one adapter on every device.

    Raises:
        ChecksumError: ``adapter_path``'s weights do not match (checked before loading).
        FileNotFoundError: a folder does not exist.
    """
    from transformers import AutoModelForCausalLM

    config = config or PGConfig()
    base_path = Path(base_path)
    adapter_path = Path(adapter_path) if adapter_path is not None else None
    for path in (base_path, adapter_path):
        if path is not None and not path.is_dir():
            raise FileNotFoundError(f"model folder {path} does not exist")
    is_adapter = adapter_path is not None and (adapter_path / "adapter_config.json").exists()
    if adapter_path is not None:
        if expected_sha256 is not None:
            verify_weights(adapter_path, expected_sha256)
        elif (adapter_path / CHECKSUM_FILE).exists():
            verify_weights(adapter_path, _recorded_sha256(adapter_path))

    weights_path = adapter_path if adapter_path is not None and not is_adapter else base_path
    tokenizer = load_tokenizer(weights_path)
    model = AutoModelForCausalLM.from_pretrained(
        weights_path, dtype=torch.float32, attn_implementation=attn_implementation
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    ref_model = None

    if is_adapter:
        from peft import PeftModel

        with _quiet_peft():
            model = PeftModel.from_pretrained(model, adapter_path, is_trainable=trainable)
    elif trainable and config.use_lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        with torch.random.fork_rng(devices=[]), _quiet_peft():
            torch.manual_seed(config.seed)
            model = get_peft_model(model, lora)
    elif trainable:
        if reference_path is not None:
            ref_model = AutoModelForCausalLM.from_pretrained(
                reference_path, dtype=torch.float32, attn_implementation=attn_implementation
            )
        else:
            ref_model = copy.deepcopy(model)
        ref_model.requires_grad_(False).eval()

    if not trainable:
        model.requires_grad_(False)
    if device is not None and torch.device(device) != torch.device("cpu"):
        model = model.to(device)
        ref_model = ref_model.to(device) if ref_model is not None else None
    model.eval()
    critic = None
    if adapter_path is not None and (adapter_path / CRITIC_FILE).exists():
        critic = Critic.load(adapter_path / CRITIC_FILE)
    return Policy(
        model=model, tokenizer=tokenizer, base_path=base_path, adapter_path=adapter_path, ref_model=ref_model, critic=critic
    )


# ---------------------------------------------------------------- checksums


def _weight_files(directory: Path) -> list[Path]:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) in {directory}")
    return files


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(directory: str | os.PathLike) -> str:
    """SHA-256 (hex) of the weight files (``*.safetensors``, ``*.bin``) in ``directory``.

    With one weight file this is that file's plain digest (what ``sha256sum`` prints);
    with several it is the digest of their ``sha256sum``-style listing, sorted by name.

    Raises:
        FileNotFoundError: the folder holds no weight file.
    """
    files = _weight_files(Path(directory))
    if len(files) == 1:
        return _file_sha256(files[0])
    listing = "".join(f"{_file_sha256(p)}  {p.name}\n" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def verify_weights(directory: str | os.PathLike, expected: str) -> None:
    """Check ``weights_sha256(directory) == expected``.

    Raises:
        ChecksumError: the digest differs (corrupt, truncated or wrong folder).
        FileNotFoundError: the folder holds no weight file.
    """
    actual = weights_sha256(directory)
    if actual != expected.lower():
        raise ChecksumError(f"weights in {directory} have sha256 {actual}, expected {expected}")


def _recorded_sha256(directory: Path) -> str:
    return json.loads((directory / CHECKSUM_FILE).read_text())["sha256"]


# ---------------------------------------------------------------- atomic writes


def _write_checksum_record(folder: Path) -> None:
    if any(p.name.endswith(WEIGHT_SUFFIXES) for p in folder.iterdir()):
        files = {p.name: _file_sha256(p) for p in _weight_files(folder)}
        record = {"sha256": weights_sha256(folder), "files": files}
        (folder / CHECKSUM_FILE).write_text(json.dumps(record, indent=1) + "\n")


def atomic_directory(out_dir: str | os.PathLike):
    """Yield a temporary folder next to ``out_dir``; on success it becomes ``out_dir``.

    :func:`pgcore.atomic.atomic_directory` (fsync, ``os.replace``, parent fsynced; an
    existing ``out_dir`` is swapped out and deleted only after the new one is in place;
    on any exception ``out_dir`` is left as it was), plus a checksum record
    (``pgcore_checksum.json``) when the folder holds weight files.
    """
    return _atomic_directory(out_dir, before_commit=_write_checksum_record)


def save_policy_atomic(policy: Policy, out_dir: str | os.PathLike) -> str:
    """Write the policy's trainable state to ``out_dir`` atomically; return its SHA-256.

    LoRA: only the adapter (``adapter_model.safetensors`` + ``adapter_config.json``).
    Full fine-tuning: the whole model as safetensors plus the tokenizer. A policy with a
    critic also writes ``critic.safetensors`` (covered by the checksum). ``out_dir`` is
    either the complete new folder or untouched: see :func:`atomic_directory`.

    Returns:
        ``weights_sha256(out_dir)``, also recorded in ``out_dir/pgcore_checksum.json``.
    """
    with atomic_directory(out_dir) as tmp:
        policy.model.save_pretrained(tmp, safe_serialization=True)
        if not policy.is_lora:
            policy.tokenizer.save_pretrained(tmp)
        if policy.critic is not None:
            policy.critic.save(tmp / CRITIC_FILE)
    return _recorded_sha256(Path(out_dir))


_MOVED_TO_PACKAGING = {"SMOLLM2_INSTALL_HINT", "SMOLLM2_PACKAGE", "convert_gguf_to_hf", "smollm2_gguf_path"}


def __getattr__(name: str):
    """GGUF -> safetensors packaging moved to :mod:`pgcore.packaging`; its old names still resolve here."""
    if name in _MOVED_TO_PACKAGING:
        from pgcore import packaging

        return getattr(packaging, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
