"""bench/learning.py: seeds summarised (mean, spread, per seed), --tis-cap, --rater and the rm variants' settings."""

import pytest

from bench.learning import (
    PROJECT_FIELDS,
    aggregate,
    check_project_fields,
    parse_args,
    parse_tis_cap,
    rm_goal_check,
    summarise,
    variant_config,
)

BASE = {"mean_rating": 3.0, "mean_rating_se": 0.1, "distinct2": 0.8}


def _point(ratings, heldout, kl, distinct2=0.8, wall_s=None):
    return {
        "ratings": ratings, "mean_rating": sum(heldout) / len(heldout), "mean_rating_se": 0.1,
        "ratings_heldout": heldout, "kl_per_completion": kl, "distinct2": distinct2, "mean_length": 40.0,
        "stale_fraction": None if ratings == 0 else 0.25, "wall_s": wall_s if wall_s is not None else ratings * 6.0,
    }


def _seed(points):
    return summarise([_point(0, [3.0, 3.0], 0.0, wall_s=0.0)] + points, BASE, 1.0)


def test_a_seeds_run_records_ratings_and_wall_minutes_to_the_target():
    run = _seed([_point(64, [3.5, 3.5], 1.0, wall_s=120.0), _point(128, [4.0, 4.5], 2.0, wall_s=300.0)])
    assert run["ratings_to_target"] == 128
    assert run["wall_minutes_to_target"] == 5.0
    assert run["final_gain"] == pytest.approx(1.25)


def test_seeds_are_summarised_as_mean_sample_sd_and_per_seed_values():
    runs = {
        "0": _seed([_point(64, [3.5, 3.5], 1.0), _point(128, [4.0, 4.0], 2.0, 0.7)]),
        "1": _seed([_point(64, [4.0, 4.0], 3.0), _point(128, [4.5, 4.5], 4.0, 0.9)]),
        "2": _seed([_point(64, [3.0, 3.0], 1.0), _point(128, [3.5, 3.5], 3.0, 0.8)]),
    }
    v = aggregate(runs)
    assert v["seeds"] == [0, 1, 2]
    assert v["per_seed"]["final_gain"] == [1.0, 1.5, 0.5]
    assert v["final_gain"] == pytest.approx(1.0) and v["final_gain_sd"] == pytest.approx(0.5)
    assert v["final_kl"] == pytest.approx(3.0) and v["final_kl_sd"] == pytest.approx(1.0)
    assert v["final_distinct2_ratio"] == pytest.approx(1.0)
    # Seed 2 never gains +1.0: the variant has not reached the target in every seed.
    assert v["per_seed"]["ratings_to_target"] == [128, 64, None]
    assert v["ratings_to_target"] is None and v["seeds_reaching_target"] == 2
    # The curve is the seeds' mean, per held-out prompt; its SE is over prompts.
    at128 = v["curve"][-1]
    assert at128["ratings"] == 128 and at128["ratings_heldout"] == [4.0, 4.0]
    assert at128["mean_rating"] == pytest.approx(4.0) and at128["mean_rating_by_seed"] == [4.0, 4.5, 3.5]
    assert at128["kl_per_completion"] == pytest.approx(3.0)


def test_when_every_seed_reaches_the_target_the_variant_needs_the_most_any_seed_needed():
    v = aggregate({"0": _seed([_point(64, [4.0, 4.0], 1.0, wall_s=60.0)]),
                   "1": _seed([_point(64, [3.5, 3.5], 1.0), _point(128, [4.2, 4.2], 1.0, wall_s=240.0)])})
    assert v["ratings_to_target"] == 128 and v["wall_minutes_to_target"] == 4.0
    assert v["final_gain_sd"] is not None
    single = aggregate({"5": _seed([_point(64, [4.0, 4.0], 1.0)])})
    assert single["final_gain_sd"] is None and single["seeds"] == [5]


def test_the_issues_goal_needs_half_the_ratings_in_every_seed_within_the_kl_and_diversity_limits():
    def variant(per_seed_ratings, kls, d2s, ratings_used=512, wall=None):
        reached = all(r is not None for r in per_seed_ratings)
        return {
            "ratings_to_target": max(per_seed_ratings) if reached else None, "ratings_used": ratings_used,
            "final_kl": sum(kls) / len(kls), "final_distinct2_ratio": min(d2s), "wall_minutes_to_target": wall,
            "per_seed": {"ratings_to_target": per_seed_ratings, "final_kl": kls, "final_distinct2_ratio": d2s},
        }

    default = variant([512, 384, 512], [2.0, 2.0, 2.0], [0.9, 0.9, 0.9], wall=30.0)
    good = variant([128, 256, 192], [1.0, 2.0, 3.0], [0.85, 0.9, 0.95], wall=20.0)
    assert rm_goal_check({"default": default, "rm_active": good})["met"] is True
    drifted = variant([128, 256, 192], [1.0, 6.0, 3.0], [0.85, 0.9, 0.95], wall=20.0)
    out = rm_goal_check({"default": default, "rm_active": drifted})
    assert out["met"] is False and out["final_kl_below_5_nats_every_seed"] is False
    slow = variant([128, 384, 192], [1.0, 2.0, 3.0], [0.85, 0.9, 0.95], wall=40.0)
    out = rm_goal_check({"default": default, "rm_active": slow})
    assert out["rm_active_at_most_half_of_default"] is False and out["wall_no_more_than_default"] is False
    assert rm_goal_check({"default": default})["met"] is None


@pytest.mark.parametrize("text, value", [("0", 0.0), ("none", 0.0), ("OFF", 0.0), ("2", 2.0), ("1.5", 1.5)])
def test_tis_cap_accepts_off_or_a_positive_cap(text, value):
    assert parse_tis_cap(text) == value


@pytest.mark.parametrize("text", ["-1", "nan", "inf", "lots"])
def test_tis_cap_refuses_anything_else(text):
    with pytest.raises(ValueError, match="tis_cap must be a number > 0, or 0 / none / off"):
        parse_tis_cap(text)


def test_arguments_set_tis_cap_rater_seeds_and_each_runs_pgconfig_seed():
    args = parse_args(["--tiny", "--tis-cap", "off", "--rater", "concise", "--seeds", "2", "--variants", "default,critic"])
    assert args.pg["tis_cap"] == 0.0 and args.rater == "concise" and args.seeds == 2
    assert args.rater_fn("p", "Short and done.") == 5.0
    assert variant_config("critic", args.pg, seed=4) == {"seed": 4, "tis_cap": 0.0, "baseline": "critic"}
    assert variant_config("default", {"seed": 9}, seed=4)["seed"] == 9  # --pg's own seed wins
    with pytest.raises(SystemExit):
        parse_args(["--tiny", "--rater", "bench.raters:nothing"])
    with pytest.raises(SystemExit):
        parse_args(["--tiny", "--seeds", "0"])


def test_the_rm_variants_stop_with_a_clear_message_when_the_project_lacks_their_settings(db, monkeypatch):
    import bench.learning as learning

    check_project_fields(["default", "naive", "critic", "rm", "rm_active"])  # this checkout has them
    monkeypatch.setitem(learning.PROJECT_FIELDS, "rm", {**PROJECT_FIELDS["rm"], "rm_from_the_future": True})
    with pytest.raises(SystemExit, match="variant 'rm' needs the project setting.*rm_from_the_future"):
        check_project_fields(["default", "rm"])


def test_the_plot_draws_every_seeds_frontier_and_the_reward_models_held_out_metrics(tmp_path):
    from bench.learning import write_outputs

    def with_rm(point, n, spearman):
        point["rm_metrics"] = {"rm_version": 1, "n_ratings": n, "held_out/spearman": spearman, "held_out/pairwise_accuracy": 0.6}
        return point

    runs = {
        "rm_active": {
            "0": _seed([with_rm(_point(64, [3.5, 3.5], 1.0), 64, 0.3), with_rm(_point(128, [4.0, 4.5], 2.0), 128, 0.5)]),
            "1": _seed([with_rm(_point(64, [3.2, 3.6], 1.5), 64, 0.2), with_rm(_point(128, [4.1, 4.1], 2.5), 128, 0.4)]),
        },
        "default": {"0": _seed([_point(64, [3.2, 3.2], 1.0)]), "1": _seed([_point(64, [3.4, 3.0], 1.0)])},
    }
    variants = {name: aggregate(r) for name, r in runs.items()}
    assert variants["rm_active"]["curve"][-1]["rm_metrics"]["held_out/spearman"] == pytest.approx(0.45)
    result = {
        "complete": True, "base": BASE, "variants": variants, "runs": runs,
        "config": {"model": "m", "rater": "vader", "ratings": 128, "train_every": 64, "heldout": 2, "max_new_tokens": 8,
                   "target_gain": 1.0, "seeds": [0, 1]},
    }
    write_outputs(result, tmp_path)
    assert (tmp_path / "learning.png").stat().st_size > 10_000
