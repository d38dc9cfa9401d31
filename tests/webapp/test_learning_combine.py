"""bench/learning.py --combine: runs of different variants merged into one result and goal check."""

import json

import pytest

from bench.learning import combine, summarise

BASE = {"mean_rating": 3.0, "mean_rating_se": 0.1, "distinct2": 0.8}


def _point(ratings, rating, kl=0.5, distinct2=0.8):
    return {
        "ratings": ratings, "mean_rating": rating, "mean_rating_se": 0.1, "kl_per_completion": kl,
        "distinct2": distinct2, "mean_length": 40.0, "stale_fraction": None if ratings == 0 else 0.2,
    }


def _run_dir(tmp_path, name, variant, ratings_curve, *, complete=True, heldout=64):
    folder = tmp_path / name
    folder.mkdir()
    curve = [_point(0, 3.0, kl=0.0)] + [_point(r, m) for r, m in ratings_curve]
    result = {
        "benchmark": "learning",
        "complete": complete,
        "config": {
            "model": "SmolLM2-135M-Instruct", "ratings": 256, "train_every": 64, "heldout": heldout,
            "max_new_tokens": 96, "target_gain": 1.0, "variants": {variant: {"lr": 1e-4}}, "torch_threads": 1,
        },
        "base": BASE,
        "variants": {variant: summarise(curve, BASE, 1.0)},
        "timing": {variant: {"wall_s": 10.0}, "total_wall_s": 12.0},
    }
    (folder / "learning.json").write_text(json.dumps(result))
    return folder


def test_two_single_variant_runs_merge_into_one_result_with_the_goal_checked(tmp_path):
    default = _run_dir(tmp_path, "d", "default", [(64, 3.5), (128, 4.1), (192, 4.2), (256, 4.3)])
    naive = _run_dir(tmp_path, "n", "naive", [(64, 3.1), (128, 3.3), (192, 3.6), (256, 3.8)])

    merged = combine([str(naive), str(default)], tmp_path / "both")

    assert list(merged["variants"]) == ["default", "naive"]  # the run order, whatever the argument order
    assert merged["variants"]["default"]["ratings_to_target"] == 128
    assert merged["variants"]["naive"]["ratings_to_target"] is None
    assert merged["goal"]["default_reaches_target"] is True
    assert merged["goal"]["default_at_most_half_of_naive"] is True  # naive ran full length and never reached it
    assert merged["complete"] is True
    written = json.loads((tmp_path / "both" / "learning.json").read_text())
    assert written["variants"].keys() == merged["variants"].keys()
    assert (tmp_path / "both" / "learning.png").stat().st_size > 0


def test_a_partial_run_makes_the_combination_partial(tmp_path):
    default = _run_dir(tmp_path, "d", "default", [(64, 3.5)], complete=False)
    naive = _run_dir(tmp_path, "n", "naive", [(64, 3.1)])
    merged = combine([str(default), str(naive)], tmp_path / "both")
    assert merged["complete"] is False
    assert merged["goal"]["default_at_most_half_of_naive"] is None  # neither reached it; naive did not run full length


def test_runs_with_different_settings_or_the_same_variant_are_refused(tmp_path):
    default = _run_dir(tmp_path, "d", "default", [(64, 3.5)])
    other = _run_dir(tmp_path, "o", "naive", [(64, 3.1)], heldout=16)
    again = _run_dir(tmp_path, "a", "default", [(64, 3.6)])
    with pytest.raises(ValueError, match="settings or base evaluation differ"):
        combine([str(default), str(other)], tmp_path / "x")
    with pytest.raises(ValueError, match="'default' appears in two runs"):
        combine([str(default), str(again)], tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
