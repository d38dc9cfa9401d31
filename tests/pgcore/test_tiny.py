import ast
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import pgcore
from pgcore.policy import weights_sha256
from pgcore.tiny import write_tiny_model


def test_the_tiny_model_is_deterministic_for_a_seed(tiny_path, tmp_path):
    assert weights_sha256(write_tiny_model(tmp_path / "again", seed=0)) == weights_sha256(tiny_path)
    assert weights_sha256(write_tiny_model(tmp_path / "other", seed=1)) != weights_sha256(tiny_path)


def test_a_wider_tiny_model_keeps_the_tokenizers_vocabulary_and_ids(tmp_path):
    wide = AutoConfig.from_pretrained(write_tiny_model(tmp_path / "wide", hidden_size=64, num_hidden_layers=3))
    assert (wide.hidden_size, wide.num_hidden_layers, wide.intermediate_size) == (64, 3, 64)
    assert wide.vocab_size == 259 and wide.eos_token_id == AutoTokenizer.from_pretrained(tmp_path / "wide").eos_token_id
    with pytest.raises(TypeError, match="vocab_size"):
        write_tiny_model(tmp_path / "bad", vocab_size=300)
    assert not (tmp_path / "bad").exists()


def test_the_tiny_model_loads_with_plain_transformers_and_has_no_pad_token(tiny_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tokenizer)
    assert tokenizer.pad_token is None and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.chat_template


def test_the_tiny_tokenizer_round_trips_any_text(tiny_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    text = "Hello, wörld! 🙂 <b>"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_pgcore_never_imports_the_web_app_or_django():
    forbidden = {"django", "celery", "webapp"}
    for path in Path(pgcore.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not {n.split(".")[0] for n in names} & forbidden, f"{path.name} imports {names}"
