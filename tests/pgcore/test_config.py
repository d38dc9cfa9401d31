import pytest

from pgcore.config import PGConfig


def test_defaults_are_valid_and_round_trip_through_a_dict():
    config = PGConfig()
    assert PGConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("lr", 0.0, "(0, 1]"),
        ("lr", 2.0, "(0, 1]"),
        ("lr", float("nan"), "(0, 1]"),
        ("kl_coef", -0.1, "[0, inf)"),
        ("clip_eps", 0.0, "(0, 1)"),
        ("clip_eps", 1.0, "(0, 1)"),
        ("epochs", 0, ">= 1"),
        ("epochs", 1.5, ">= 1"),
        ("minibatch_size", 0, ">= 1"),
        ("max_grad_norm", 0.0, "(0, inf)"),
        ("baseline", "median", "'loo'"),
        ("whiten_advantages", 1, "bool"),
        ("annotator_shrinkage", -1.0, "[0, inf)"),
        ("lora_r", 0, ">= 1"),
        ("lora_alpha", True, ">= 1"),
        ("lora_dropout", 1.0, "[0, 1)"),
        ("seed", -1, ">= 0"),
    ],
)
def test_a_bad_value_raises_value_error_naming_the_field_and_allowed_range(field, value, allowed):
    with pytest.raises(ValueError) as excinfo:
        PGConfig(**{field: value})
    assert field in str(excinfo.value)
    assert allowed in str(excinfo.value)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown PGConfig field.*learning_rate"):
        PGConfig.from_dict({"learning_rate": 0.1})


def test_integers_given_for_float_fields_are_stored_as_floats():
    config = PGConfig(lr=1, kl_coef=0)
    assert isinstance(config.lr, float) and isinstance(config.kl_coef, float)
