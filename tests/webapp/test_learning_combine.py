"""bench/learning.py --combine: runs of different variants merged into one result and goal check."""

import json

import pytest

from bench.learning import combine, paired_vs_default, summarise

BASE = {"mean_rating": 3.0, "mean_rating_se": 0.1, "distinct2": 0.8}


def _point(ratings, rating, kl=0.5, distinct2=0.8):
    return {
        "ratings": ratings, "mean_rating": rating, "mean_rating_se": 0.1, "kl_per_completion": kl,
        "distinct2": distinct2, "mean_length": 40.0, "stale_fraction": None if ratings == 0 else 0.2,
    }


def _run_dir(tmp_path, name, variant, ratings_curve, *, complete=True, heldout=64, ratings=256, lr=1e-4, project=None):
    folder = tmp_path / name
    folder.mkdir()
    curve = [_point(0, 3.0, kl=0.0)] + [_point(r, m) for r, m in ratings_curve]
    result = {
        "benchmark": "learning",
        "complete": complete,
        "config": {
            "model": "SmolLM2-135M-Instruct", "ratings": ratings, "train_every": 64, "heldout": heldout,
            "max_new_tokens": 96, "target_gain": 1.0, "variants": {variant: {"lr": lr}}, "torch_threads": 1,
            "project_settings": {variant: project} if project else {},
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


def test_runs_of_variants_with_their_own_project_settings_combine_and_keep_them(tmp_path):
    default = _run_dir(tmp_path, "d", "default", [(64, 3.5)])
    rm_active = _run_dir(
        tmp_path, "r", "rm_active", [(64, 3.6)], project={"reward_source": "reward_model", "active_queue": True}
    )
    merged = combine([str(default), str(rm_active)], tmp_path / "both")
    assert list(merged["variants"]) == ["default", "rm_active"]
    assert merged["config"]["project_settings"] == {"rm_active": {"reward_source": "reward_model", "active_queue": True}}
    with pytest.raises(ValueError, match="settings or base evaluation differ"):  # anything else still has to match
        combine([str(default), str(_run_dir(tmp_path, "h", "rm", [(64, 3.6)], heldout=16, project={"x": 1}))], tmp_path / "o")


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


def test_a_probe_joins_under_its_own_name_without_touching_the_goal_or_completeness(tmp_path):
    default = _run_dir(tmp_path, "d", "default", [(64, 3.5), (128, 3.7), (192, 3.8), (256, 3.9)])
    naive = _run_dir(tmp_path, "n", "naive", [(64, 3.1), (128, 3.3), (192, 3.6), (256, 4.1)])
    # the default variant again with another learning rate, stopped early at 128 of the 128 it asked for
    probe = _run_dir(tmp_path, "p", "default", [(64, 3.9), (128, 4.2)], ratings=128, lr=3e-4)

    merged = combine([str(default), str(naive), f"{probe}=default_lr3e-4"], tmp_path / "all")

    assert list(merged["variants"]) == ["default", "naive", "default_lr3e-4"]
    assert merged["variants"]["default_lr3e-4"]["ratings_to_target"] == 128
    assert merged["config"]["variants"]["default_lr3e-4"] == {"lr": 3e-4}
    assert merged["probes"] == {"default_lr3e-4": {"from": str(probe), "variant": "default", "ratings": 128, "complete": True}}
    assert merged["goal"]["default_reaches_target"] is False  # the goal is the default's, not the probe's
    assert merged["goal"]["default_at_most_half_of_naive"] is False
    assert merged["complete"] is True  # the probe asked for fewer ratings; the four variants ran full length
    assert merged["config"]["ratings"] == 256
    assert (tmp_path / "all" / "learning.png").stat().st_size > 0


def test_a_probe_must_be_one_variant_with_otherwise_equal_settings(tmp_path):
    default = _run_dir(tmp_path, "d", "default", [(64, 3.5)])
    two = _run_dir(tmp_path, "two", "default", [(64, 3.6)])
    result = json.loads((two / "learning.json").read_text())
    result["variants"]["naive"] = result["variants"]["default"]
    (two / "learning.json").write_text(json.dumps(result))
    other = _run_dir(tmp_path, "o", "default", [(64, 3.1)], heldout=16)
    with pytest.raises(ValueError, match="must hold one variant, it holds 2"):
        combine([str(default), f"{two}=probe"], tmp_path / "x")
    with pytest.raises(ValueError, match="settings or base evaluation differ"):
        combine([str(default), f"{other}=probe"], tmp_path / "y")
    with pytest.raises(ValueError, match="'default' appears in two runs"):
        combine([str(default), f"{default}=default"], tmp_path / "z")


def _heldout_curve(per_point):
    """A curve whose points carry per-prompt held-out ratings (4 prompts here)."""
    points = [{**_point(0, 3.0, kl=0.0), "ratings_heldout": [3, 3, 3, 3]}]
    for ratings, per_prompt in per_point:
        points.append({**_point(ratings, sum(per_prompt) / len(per_prompt)), "ratings_heldout": per_prompt})
    return {"curve": points}


def test_variants_are_compared_with_default_prompt_by_prompt():
    default = _heldout_curve([(64, [3, 4, 4, 5]), (128, [4, 4, 5, 5])])
    ablation = _heldout_curve([(64, [3, 4, 4, 5]), (128, [3, 3, 5, 4])])  # 0 at 64; -1, -1, 0, -1 at 128

    out = paired_vs_default({"default": default, "no_offpolicy": ablation}, late_from=64)

    at64, at128 = out["no_offpolicy"]["points"]
    assert at64 == {"ratings": 64, "diff": 0.0, "paired_se": 0.0}
    assert at128["ratings"] == 128 and at128["diff"] == pytest.approx(-0.75)
    assert at128["paired_se"] == pytest.approx((0.25 / 4) ** 0.5)  # SD of (-1, -1, 0, -1) is 0.5; / sqrt(4)
    late = out["no_offpolicy"]["late"]  # per prompt averaged over 64 and 128: -0.5, -0.5, 0, -0.5
    assert late["n_points"] == 2 and late["diff"] == pytest.approx(-0.375)
    assert late["paired_se"] == pytest.approx((0.0625 / 4) ** 0.5)
    assert paired_vs_default({"naive": ablation}, late_from=64) == {}
    assert paired_vs_default({"default": default, "naive": ablation}, late_from=256)["naive"]["late"] is None


def test_one_variant_can_be_taken_from_an_earlier_combination(tmp_path):
    default = _run_dir(tmp_path, "d", "default", [(64, 3.5), (128, 3.7), (192, 3.8), (256, 3.9)])
    naive = _run_dir(tmp_path, "n", "naive", [(64, 3.1), (128, 3.3), (192, 3.6), (256, 4.1)])
    partial = _run_dir(tmp_path, "p", "no_offpolicy", [(64, 3.2)], complete=False)
    earlier = tmp_path / "earlier"
    combine([str(default), str(naive), str(partial)], earlier)  # the ablation stopped early
    rerun = _run_dir(tmp_path, "r", "no_offpolicy", [(64, 3.2), (128, 3.4), (192, 3.5), (256, 3.6)])

    result = json.loads((rerun / "learning.json").read_text())
    result["config"]["completions_per_prompt"] = 1  # recorded since the setting exists; absent above means 1
    (rerun / "learning.json").write_text(json.dumps(result))

    merged = combine([f"{earlier}:default", f"{earlier / 'learning.json'}:naive", str(rerun)], tmp_path / "all")

    assert list(merged["variants"]) == ["default", "naive", "no_offpolicy"]
    assert merged["variants"]["no_offpolicy"]["ratings_used"] == 256
    assert merged["complete"] is True  # every variant used the 256 ratings asked for
    assert combine([f"{earlier}:default", str(partial)], tmp_path / "part")["complete"] is False
    with pytest.raises(ValueError, match="no variant 'no_annotator_norm' there"):
        combine([f"{earlier}:no_annotator_norm"], tmp_path / "x")
