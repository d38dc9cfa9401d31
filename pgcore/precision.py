"""Precision and device: where the update runs and in which number format.

- :func:`select_device`: CUDA when PyTorch sees a GPU (a GPU training worker uses it),
  else the CPU; ``REWARDLOOP_DEVICE`` / the ``prefer`` argument can force one.
- :func:`native_bf16_matmul` / :func:`bf16_autocast_active` / :func:`autocast`: bf16
  autocast over fp32 master weights where bf16 matmuls are the fast path, fp32 elsewhere.
- :func:`frozen_weights_in_bf16`: LoRA's frozen base weights cast to bf16 once per update.

Pure PyTorch; never imports Django.
"""

from __future__ import annotations

import contextlib
import os
import platform

import torch

from pgcore.config import PGConfig
from pgcore.policy import Policy

DEVICE_ENV = "REWARDLOOP_DEVICE"


def select_device(prefer: str | None = None) -> torch.device:
    """The device to train and sample on: ``prefer`` (or ``$REWARDLOOP_DEVICE``) when given, else CUDA
    when available, else CPU. ``"auto"`` (like nothing given) picks CUDA when available.

    Raises:
        ValueError: ``prefer`` names CUDA but PyTorch sees no GPU, or is no device name.
    """
    prefer = prefer or os.environ.get(DEVICE_ENV) or None
    if prefer is None or prefer == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(prefer)
    except RuntimeError as exc:
        raise ValueError(f"{prefer!r} is not a device name (cpu, cuda, cuda:0, ...)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {prefer!r} was asked for but PyTorch sees no CUDA GPU")
    return device


@contextlib.contextmanager
def frozen_weights_in_bf16(policy: Policy):
    """Hold the frozen ``nn.Linear`` weights of a LoRA policy in bf16 inside the block.

    Under ``torch.autocast`` a matmul casts its fp32 weight to bf16 on every call; the
    cast is cached only for leaf tensors that require grad (PyTorch's autocast cast
    cache), so LoRA's frozen base weights, including the output layer, were re-cast in
    every forward: a copy of the whole model per forward. Casting them once gives the
    same bf16 values, so autocast results are bit-for-bit unchanged. The fp32 weights are
    put back on exit, also on an exception; a weight shared with another module (the
    output layer tied to the embedding) is swapped only in the linear layer, so the
    embedding stays fp32. Costs a bf16 copy of the frozen weights (~270 MB for
    SmolLM2-135M) for the duration. A no-op for a policy without LoRA.
    """
    swapped: list[tuple[torch.nn.Module, torch.nn.Parameter]] = []
    if policy.is_lora:
        for module in policy.model.modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, torch.nn.Linear) and weight.dtype == torch.float32 and not weight.requires_grad:
                swapped.append((module, weight))
                module.weight = torch.nn.Parameter(weight.detach().to(torch.bfloat16), requires_grad=False)
    try:
        yield
    finally:
        for module, weight in swapped:
            module.weight = weight


def native_bf16_matmul() -> bool:
    """Whether this CPU has bf16 matrix-multiply instructions, so bf16 autocast is the fast path.

    On x86 that means the AVX512_BF16 extension or AMX; elsewhere (Arm's BF16 extension)
    oneDNN's own check, ``torch.ops.mkldnn._is_mkldnn_bf16_supported``, decides. oneDNN's
    check alone is not enough on x86: it also says yes for plain AVX-512 (BW/VL/DQ), where
    bf16 is converted rather than multiplied and is slower than fp32. Measured with
    ``bench/bf16_fallback.py`` (one SmolLM2-135M LoRA minibatch, forward and backward, one
    thread, 2026-11-30): an AVX2-only AMD EPYC, 156 s under bf16 autocast against 6.9 s in
    fp32; an Intel Xeon with AVX-512 but no AVX512_BF16, 13.5 s against 4.7 s; a Zen 4
    EPYC with AVX512_BF16, 2.57 s against 4.17 s. False if this build cannot say.
    """
    try:
        if platform.machine().lower() in {"x86_64", "amd64", "i386", "i686", "x86"}:
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_autocast_active(config: PGConfig, device: torch.device | str = "cpu") -> bool:
    """``config.bf16_autocast`` where bf16 matmuls are native, else False.

    On the CPU that is :func:`native_bf16_matmul`; on CUDA, ``torch.cuda.is_bf16_supported()``.
    bf16 autocast is a speed setting: where bf16 would be the slow path, the update runs
    in fp32, which gives the same update up to rounding.
    """
    if not config.bf16_autocast:
        return False
    if torch.device(device).type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return native_bf16_matmul()


def autocast(config: PGConfig, device: torch.device | str = "cpu"):
    """``torch.autocast(device, bfloat16)`` when :func:`bf16_autocast_active`, else a no-op context."""
    device = torch.device(device)
    if bf16_autocast_active(config, device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
