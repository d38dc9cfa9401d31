"""Precision and device choice live in pgcore.precision; GGUF packaging in pgcore.packaging."""

import pytest
import torch

from pgcore import packaging, policy, precision
from pgcore.config import PGConfig


def test_the_device_is_cuda_when_pytorch_sees_a_gpu_else_the_cpu(monkeypatch):
    monkeypatch.delenv(precision.DEVICE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.select_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert precision.select_device() == torch.device("cuda")


def test_a_device_can_be_forced_but_not_a_gpu_that_is_not_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(precision.DEVICE_ENV, "cpu")
    assert precision.select_device() == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        precision.select_device("cuda")
    with pytest.raises(ValueError, match="not a device name"):
        precision.select_device("abacus")


def test_autocast_is_bf16_only_where_bf16_matmuls_are_native(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16_matmul", lambda: True)
    with precision.autocast(PGConfig(bf16_autocast=True)):
        assert torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(precision, "native_bf16_matmul", lambda: False)
    with precision.autocast(PGConfig(bf16_autocast=True)):
        assert not torch.is_autocast_enabled("cpu")
    assert not precision.bf16_autocast_active(PGConfig(bf16_autocast=False))


def test_the_old_names_still_resolve_after_the_move():
    from pgcore import trainer

    assert trainer.bf16_autocast_active is precision.bf16_autocast_active
    assert trainer.frozen_weights_in_bf16 is precision.frozen_weights_in_bf16
    assert policy.convert_gguf_to_hf is packaging.convert_gguf_to_hf
    assert policy.smollm2_gguf_path is packaging.smollm2_gguf_path
