"""Fitting reward-model versions on a project's ratings (webapp.rewards.services)."""

from __future__ import annotations

import pytest
import torch

from webapp.annotation.models import Comparison, Completion, Pair, Rating
from webapp.errors import ApplicationError
from webapp.policies import artifacts
from webapp.rewards import selectors, services, tasks
from webapp.rewards.models import RewardModelVersion

from tests.webapp.annotation_helpers import make_project
from tests.webapp.rewards_helpers import BAD, GOOD, _completion, _rate_learnable, many_prompts  # noqa: F401


def test_too_few_ratings_is_a_clear_error_and_fits_nothing(project, annotator, many_prompts):
    _rate_learnable(project, many_prompts[:5], annotator)
    with pytest.raises(ApplicationError, match=r"Too few ratings to fit a reward model: 10 judgments, at least 32"):
        services.reward_model_fit(project=project)
    assert not RewardModelVersion.objects.exists()
    assert not Completion.objects.filter(rm_score__isnull=False).exists()


def test_fit_stores_a_version_with_its_ratings_metrics_and_artefact(project, annotator, many_prompts):
    _rate_learnable(project, many_prompts, annotator)
    version = services.reward_model_fit(project=project)
    ratings = sorted(Rating.objects.values_list("id", flat=True))
    assert (version.number, version.n_ratings, version.n_judgments) == (1, len(ratings), len(ratings))
    assert version.rating_ids == ratings
    assert version.rating_ids_sha256 == services._ids_sha256(ratings)
    assert version.metrics["held_out/n_ratings"] > 0
    assert version.metrics["loss/final"] < version.metrics["loss/initial"]
    model = services.reward_model_load(version=version)
    assert model.config.to_dict() == version.config


def test_the_model_tells_good_from_bad_completions_on_held_out_prompts(project, annotator, many_prompts):
    _rate_learnable(project, many_prompts, annotator)
    version = services.reward_model_fit(project=project)
    assert version.metrics["held_out/pearson"] > 0.9
    assert version.metrics["held_out/pairwise_accuracy"] > 0.9


def test_fit_writes_scores_and_uncertainties_on_rated_and_pool_completions(project, annotator, many_prompts):
    _rate_learnable(project, many_prompts, annotator)
    good, bad = _completion(project, many_prompts[0], GOOD), _completion(project, many_prompts[0], BAD)  # unrated pool
    services.reward_model_fit(project=project)
    assert not Completion.objects.filter(rm_score__isnull=True).exists()
    good.refresh_from_db(), bad.refresh_from_db()
    assert good.rm_score > bad.rm_score
    assert good.rm_uncertainty >= 0 and bad.rm_uncertainty >= 0


def test_a_second_fit_on_the_same_ratings_is_version_two_with_the_same_scores(project, annotator, many_prompts):
    _rate_learnable(project, many_prompts, annotator)
    first = services.reward_model_fit(project=project)
    scores = dict(Completion.objects.values_list("id", "rm_score"))
    second = services.reward_model_fit(project=project)
    assert second.number == 2 and second.rating_ids_sha256 == first.rating_ids_sha256
    assert dict(Completion.objects.values_list("id", "rm_score")) == pytest.approx(scores)


def test_held_out_prompts_ratings_are_never_fitted_on(project, annotator, many_prompts):
    made = _rate_learnable(project, many_prompts, annotator)
    held = project.prompts.get(held_out=True)
    c = _completion(project, held, GOOD)
    Rating.objects.create(completion=c, annotator=annotator, score=1)
    version = services.reward_model_fit(project=project)
    assert len(version.rating_ids) == len(made)
    assert Rating.objects.get(completion=c).pk not in version.rating_ids


def test_gold_items_judgments_are_never_fitted_on_as_training_never_uses_them(project, annotator, many_prompts):
    """A gold item checks the annotator; its judgment is no reward signal for the fit or a policy update."""
    from webapp.annotation import selectors as annotation_selectors
    from webapp.annotation.services import gold_item_set

    made = _rate_learnable(project, many_prompts, annotator)
    gold = _completion(project, many_prompts[0], GOOD, n=3)
    gold_item_set(completion=gold, answer={"score": 5})
    gold_rating = Rating.objects.create(completion=gold, annotator=annotator, score=5)
    version = services.reward_model_fit(project=project)
    assert len(version.rating_ids) == len(made)
    assert gold_rating.pk not in version.rating_ids
    assert gold_rating.pk not in {r.rating_id for r in selectors.rating_rows(project=project)}
    assert not annotation_selectors.new_ratings(project=project).filter(pk=gold_rating.pk).exists()
    assert set(version.rating_ids) == set(annotation_selectors.new_ratings(project=project).values_list("id", flat=True))


def test_ratings_are_normalised_per_annotator_like_training(project, make_user, many_prompts):
    """A lenient annotator's 3/5 is a harsh one's 2/4 (shrinkage 0: exact)."""
    project.pg_config = {**project.pg_config, "annotator_shrinkage": 0.0}
    project.save()
    harsh, lenient = make_user("harsh"), make_user("lenient")
    for i, prompt in enumerate(many_prompts[:10]):
        Rating.objects.create(completion=_completion(project, prompt, GOOD), annotator=harsh, score=2 + 2 * (i % 2))
        Rating.objects.create(completion=_completion(project, prompt, BAD), annotator=lenient, score=3 + 2 * (i % 2))
    data = services.judgments_build(project=project, rows=selectors.rating_rows(project=project))
    by_completion = dict(zip(data["all"].rating_index.tolist(), data["all"].rating_target.tolist()))
    targets = {
        (r.annotator_id, r.score): by_completion[data["completion_ids"].index(r.completion_id)]
        for r in Rating.objects.all()
    }
    assert targets[(harsh.pk, 2)] == pytest.approx(targets[(lenient.pk, 3)])
    assert targets[(harsh.pk, 4)] == pytest.approx(targets[(lenient.pk, 5)])


def test_pairwise_comparisons_are_bradley_terry_judgments(tiny_model_dir, models_dir, make_user, settings):
    settings.REWARDLOOP_RM_MIN_JUDGMENTS = 8
    pw = make_project(tiny_model_dir, slug="pw", mode="pairwise", n_prompts=30)
    people = [make_user(f"p{i}") for i in range(2)]
    for i, prompt in enumerate(pw.prompts.filter(held_out=False)):
        good_first = i % 2 == 0
        a = _completion(pw, prompt, GOOD if good_first else BAD)
        b = _completion(pw, prompt, BAD if good_first else GOOD)
        pair = Pair.objects.create(project=pw, completion_a=a, completion_b=b)
        for person in people:
            choice = "a" if good_first else "b"
            if i % 7 == 3:
                choice = "tie"
            comparison = Comparison.objects.create(pair=pair, annotator=person, choice=choice, a_on_left=True)
            for c in (a, b):
                Rating.objects.create(completion=c, annotator=person, comparison=comparison)
    version = services.reward_model_fit(project=pw)
    assert version.n_judgments == Comparison.objects.filter(pair__project=pw).count()
    assert version.metrics["fit/n_pairs"] == version.n_judgments and version.metrics["fit/n_ratings"] == 0
    assert version.metrics["held_out/comparison_accuracy"] > 0.9
    scored = list(Completion.objects.filter(project=pw))
    mean_good = torch.tensor([c.rm_score for c in scored if c.token_ids[0] == GOOD]).mean()
    mean_bad = torch.tensor([c.rm_score for c in scored if c.token_ids[0] == BAD]).mean()
    assert mean_good > mean_bad


def test_a_corrupt_artefact_is_a_clear_error(project, annotator, many_prompts):
    _rate_learnable(project, many_prompts, annotator)
    version = services.reward_model_fit(project=project)
    weights = artifacts.models_folder(version.artefact_path, published=True) / "reward_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"garbage!")
    with pytest.raises(ApplicationError, match=f"RM{version.number} cannot be loaded"):
        services.reward_model_load(version=version)


def test_the_task_fits_and_says_none_when_there_are_too_few_ratings(project, annotator, many_prompts):
    assert tasks.reward_model_fit(project.pk) is None
    _rate_learnable(project, many_prompts, annotator)
    assert tasks.reward_model_fit(project.pk) == 1
    assert tasks.reward_model_fit(10**6) is None


def test_the_task_runs_on_the_training_queue():
    from webapp.celery import app

    route = app.amqp.router.route({}, "webapp.rewards.tasks.reward_model_fit")
    assert route["queue"].name == "training"


def test_the_feature_cache_is_reused_and_a_damaged_one_recomputed(project, annotator, many_prompts, monkeypatch):
    from pgcore import reward_model

    _rate_learnable(project, many_prompts, annotator)
    services.reward_model_fit(project=project)
    calls = []
    real = reward_model.completion_features
    monkeypatch.setattr(reward_model, "completion_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    services.reward_model_fit(project=project)
    assert calls == []
    for cache in (services._rm_dir(project)).glob("features-*.pt"):
        cache.write_bytes(b"not a torch file")
    services.reward_model_fit(project=project)
    assert calls == [1]


def test_the_default_config_pools_four_layers_through_the_depth(tmp_path):
    from webapp.policies.models import Project

    (tmp_path / "config.json").write_text('{"num_hidden_layers": 30}')
    config = services.reward_model_config_for(project=Project(base_model_path=str(tmp_path)))
    assert config.layers == (8, 16, 24, 30)
    assert (config.pooling, config.pca_dim, config.head) == ("mean_last", 256, "linear")
    with pytest.raises(ApplicationError, match="n_members"):
        services.reward_model_config_for(project=Project(base_model_path=str(tmp_path)), overrides={"n_members": 0})


def test_the_production_feedback_weight_weighs_production_ratings_in_the_fit(project, annotator, make_user,
                                                                             many_prompts):
    """Production feedback that contradicts the annotators: at weight 0 the fit is the one without it, and
    the more it weighs, the less the model separates what annotators call good from bad."""
    made = _rate_learnable(project, many_prompts, annotator)
    app_user = make_user("app-user")
    for i, prompt in enumerate(many_prompts):  # the opposite view, on other completions of the same prompts
        good = i % 2 == 0
        c = _completion(project, prompt, GOOD if good else BAD, n=5 + (i % 2))
        Rating.objects.create(completion=c, annotator=app_user, score=1 if good else 5, source="production")
    production_ids = set(Rating.objects.filter(source="production").values_list("id", flat=True))

    def fit_at(weight):
        project.production_feedback_weight = weight
        project.save(update_fields=["production_feedback_weight"])
        version = services.reward_model_fit(project=project)
        scores = dict(Completion.objects.values_list("id", "rm_score"))
        good = [scores[c.pk] for c in made if c.token_ids[0] == GOOD]
        bad = [scores[c.pk] for c in made if c.token_ids[0] == BAD]
        return version, scores, sum(good) / len(good) - sum(bad) / len(bad)

    zero, zero_scores, zero_gap = fit_at(0.0)
    assert not production_ids & set(zero.rating_ids)  # "fitted on" says what was used
    assert selectors.judgment_count(project=project) == len(made)  # and they count for nothing
    one, _, one_gap = fit_at(1.0)
    assert production_ids <= set(one.rating_ids)
    _, _, heavy_gap = fit_at(4.0)
    assert zero_gap > one_gap > heavy_gap
    Rating.objects.filter(source="production").delete()
    _, without_scores, without_gap = fit_at(1.0)
    assert without_gap == pytest.approx(zero_gap, rel=1e-4)
    assert without_scores == pytest.approx(zero_scores, rel=1e-4, abs=1e-5)


def test_an_annotator_below_the_gold_accuracy_moves_the_fit_less(project, annotator, make_user, many_prompts):
    """A sloppy annotator who contradicts the careful one and fails the gold checks: the lower the
    project's ``gold_low_weight``, the better the fit separates what the careful one calls good from bad,
    and each judgment weighs in the fit what its completion weighs in a policy update (one rule)."""
    from pgcore.config import PGConfig

    from webapp.annotation import selectors as annotation_selectors
    from webapp.annotation.services import gold_item_set
    from webapp.training.services import training_batch_build

    made = _rate_learnable(project, many_prompts, annotator)
    sloppy = make_user("sloppy")
    for i, prompt in enumerate(many_prompts):  # the opposite view, on other completions of the same prompts
        good = i % 2 == 0
        c = _completion(project, prompt, GOOD if good else BAD, n=5 + (i % 2))
        Rating.objects.create(completion=c, annotator=sloppy, score=1 if good else 5)
    for token, answer in ((GOOD, 5), (BAD, 1)):  # two gold items: the careful one right, the sloppy one wrong
        gold = _completion(project, many_prompts[0], token, n=3)
        gold_item_set(completion=gold, answer={"score": answer})
        Rating.objects.create(completion=gold, annotator=annotator, score=answer)
        Rating.objects.create(completion=gold, annotator=sloppy, score=6 - answer)
    project.gold_min_answers, project.gold_min_accuracy = 2, 0.7
    shared = _completion(project, many_prompts[1], GOOD, n=7)  # rated by both: weighs its best rater's trust
    for person, score in ((annotator, 5), (sloppy, 1)):
        Rating.objects.create(completion=shared, annotator=person, score=score)

    def fit_at(low_weight):
        project.gold_low_weight = low_weight
        project.save()
        assert annotation_selectors.annotator_weights(project=project) == {sloppy.pk: low_weight}
        services.reward_model_fit(project=project)
        scores = dict(Completion.objects.values_list("id", "rm_score"))
        good = [scores[c.pk] for c in made if c.token_ids[0] == GOOD]
        bad = [scores[c.pk] for c in made if c.token_ids[0] == BAD]
        return sum(good) / len(good) - sum(bad) / len(bad)

    full_gap, low_gap, zero_gap = fit_at(1.0), fit_at(0.25), fit_at(0.0)
    assert zero_gap > low_gap > full_gap

    # One rule: a rated completion weighs the same in the fit's judgments as in a policy update's batch.
    data = services.judgments_build(project=project, rows=selectors.rating_rows(project=project))
    judged = data["all"]
    fit_weight = {data["completion_ids"][i]: w for i, w in zip(judged.rating_index.tolist(),
                                                               judged.rating_weight.tolist())}
    ratings = list(Rating.objects.filter(completion__gold__isnull=True))
    batch = training_batch_build(project=project, ratings=ratings, config=PGConfig.from_dict(project.pg_config))
    trained = sorted({r.completion_id for r in ratings})
    assert dict(zip(trained, batch.weights)) == pytest.approx({cid: fit_weight[cid] for cid in trained})
    assert fit_weight[shared.pk] == 1.0 and fit_weight[made[0].pk] == 1.0
    assert sorted(set(fit_weight.values())) == [0.0, 1.0]  # the sloppy one's own completions weigh nothing
