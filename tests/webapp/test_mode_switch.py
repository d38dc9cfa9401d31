"""Switching a project's rating mode (in the Django admin) while people are annotating (issue 14: input).

Nobody is left on an item the new mode cannot rate, no staff page or plot answers 500,
and no interval has its low end above its high end.
"""

import json

import pytest
from django.forms.models import model_to_dict
from django.urls import reverse

from webapp.annotation import services
from webapp.annotation.models import Comparison, Lease
from webapp.policies.models import Project
from webapp.policies.selectors import mean_with_ci, version_rating_stats

from tests.webapp.annotation_helpers import make_pair

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def superuser(django_user_model):
    return django_user_model.objects.create_superuser("root", password="pw-12345678")


def switch_mode_in_admin(client, superuser, project, mode):
    """Change the rating mode through the admin's change form, as staff would."""
    client.force_login(superuser)
    project.refresh_from_db()
    data = {k: ("" if v is None else v) for k, v in model_to_dict(project).items()}
    data["pg_config"] = json.dumps(project.pg_config)
    data["rating_mode"] = mode
    # The members inline's management form: no membership row is added or changed here.
    data.update({"memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0",
                 "memberships-MIN_NUM_FORMS": "0", "memberships-MAX_NUM_FORMS": "1000"})
    response = client.post(reverse("admin:policies_project_change", args=[project.pk]), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    project.refresh_from_db()
    assert project.rating_mode == mode


def test_an_annotator_on_a_single_item_when_the_project_turns_pairwise_is_given_a_pair(
    client, superuser, project, annotator, make_completion
):
    single = make_completion(project, text="a single completion")
    held = services.lease_next(project=project, annotator=annotator)
    assert held.completion_id == single.pk
    pair = make_pair(project, make_completion, texts=("pair side A", "pair side B"))

    switch_mode_in_admin(client, superuser, project, "pairwise")

    client.force_login(annotator)
    shown = client.get(reverse("annotation:card", args=[project.slug]), **HTMX).content.decode()
    assert "a single completion" not in shown  # the old-mode lease is not shown; the card asks for the next item
    body = client.post(reverse("annotation:next", args=[project.slug]), **HTMX).content.decode()
    assert "pair side A" in body and "pair side B" in body and "a single completion" not in body
    assert list(Lease.objects.filter(annotator=annotator, fulfilled=False).values_list("completion_id", flat=True)) == [
        pair.completion_a_id
    ]
    response = client.post(reverse("annotation:rate", args=[project.slug, pair.completion_a_id]), {"choice": "tie"}, **HTMX)
    assert response.status_code == 200
    assert Comparison.objects.filter(annotator=annotator, pair=pair, choice="tie").exists()


def test_a_lease_taken_in_likert_is_given_back_after_the_switch_to_thumbs_and_the_card_leases_in_thumbs(
    client, superuser, project, annotator, make_completion
):
    held = make_completion(project, text="leased under likert")
    old = services.lease_next(project=project, annotator=annotator)
    assert (old.completion_id, Lease.objects.get(pk=old.pk).rating_mode) == (held.pk, "likert")

    switch_mode_in_admin(client, superuser, project, "thumbs")

    client.force_login(annotator)
    shown = client.get(reverse("annotation:card", args=[project.slug]), **HTMX).content.decode()
    assert "leased under likert" not in shown  # the likert lease is not shown as a thumbs item; the card asks
    body = client.post(reverse("annotation:next", args=[project.slug]), **HTMX).content.decode()
    assert 'name="mode" value="thumbs"' in body and "leased under likert" in body  # the item, leased anew
    assert not Lease.objects.filter(pk=old.pk).exists()
    assert list(Lease.objects.filter(annotator=annotator).values_list("completion_id", "rating_mode", "fulfilled")) == [
        (held.pk, "thumbs", False)
    ]
    again = client.post(reverse("annotation:next", args=[project.slug]), **HTMX).content.decode()
    assert "leased under likert" in again and Lease.objects.filter(annotator=annotator).count() == 1  # kept now


def test_a_likert_score_sent_for_an_old_item_after_the_switch_says_why_and_shows_a_pair(
    client, superuser, project, annotator, make_completion
):
    single = make_completion(project, text="a single completion")
    services.lease_next(project=project, annotator=annotator)
    make_pair(project, make_completion, texts=("pair side A", "pair side B"))
    switch_mode_in_admin(client, superuser, project, "pairwise")

    client.force_login(annotator)
    response = client.post(reverse("annotation:rate", args=[project.slug, single.pk]), {"score": "4"}, **HTMX)
    body = response.content.decode()
    assert response.status_code == 200
    assert "not a pair" in body and "pair side A" in body


def _rate_a_bit_in_every_mode(client, superuser, project, make_user, make_completion):
    """Likert scores, thumbs and pairwise decisions on the same versions, as a project that changed its mind has."""
    Project.objects.filter(pk=project.pk).update(ratings_per_item=3)
    project.refresh_from_db()
    people = [make_user(f"person{i}") for i in range(3)]
    likert, thumbs = make_completion(project, text="rated in likert"), make_completion(project, text="rated in thumbs")
    for person, score in zip(people, (4, 5, 5)):
        services.rating_create(annotator=person, completion=likert, score=score)
    switch_mode_in_admin(client, superuser, project, "thumbs")
    for person, up in zip(people, (True, False, False)):
        services.rating_create(annotator=person, completion=thumbs, thumbs_up=up)
    switch_mode_in_admin(client, superuser, project, "pairwise")
    pair = make_pair(project, make_completion)
    for person, choice in zip(people, ("a", "b", "a")):
        services.comparison_create(annotator=person, pair=pair, choice=choice, a_on_left=True)
    return people


@pytest.mark.parametrize("final_mode", ["likert", "thumbs", "pairwise"])
def test_after_any_mode_switch_no_staff_page_or_plot_answers_500(
    client, superuser, project, make_user, make_completion, final_mode
):
    people = _rate_a_bit_in_every_mode(client, superuser, project, make_user, make_completion)
    switch_mode_in_admin(client, superuser, project, final_mode)
    client.force_login(superuser)
    for name in ("policies:versions", "policies:ratings_plot", "policies:kl_plot", "annotation:figures"):
        response = client.get(reverse(name, args=[project.slug]))
        assert response.status_code == 200, name
    client.force_login(people[0])
    for name in ("annotation:annotate", "annotation:card"):
        assert client.get(reverse(name, args=[project.slug])).status_code == 200


@pytest.mark.parametrize("final_mode", ["likert", "thumbs", "pairwise"])
def test_after_any_mode_switch_every_interval_is_ordered_and_on_the_modes_scale(
    client, superuser, project, make_user, make_completion, final_mode
):
    _rate_a_bit_in_every_mode(client, superuser, project, make_user, make_completion)
    switch_mode_in_admin(client, superuser, project, final_mode)
    lo_bound, hi_bound = (0.0, 1.0) if final_mode == "thumbs" else (1.0, 5.0)
    stats = version_rating_stats(project=project)
    assert any(s.n for s in stats.values())
    for s in stats.values():
        if s.n:
            assert lo_bound <= s.low <= s.mean <= s.high <= hi_bound
    served = stats[project.served_version_id]
    assert served.n == 3  # only this mode's kind of rating: three Likert scores or three thumbs
    assert served.mean == (pytest.approx(1 / 3) if final_mode == "thumbs" else pytest.approx(14 / 3))


@pytest.mark.parametrize(
    "values,bounds",
    [([4.0, 5.0, 5.0], (0.0, 1.0)), ([0.0, 1.0, 1.0], (1.0, 5.0)), ([5.0, 5.0, 4.0], (1.0, 5.0)), ([1.0, 1.0], (1.0, 5.0))],
)
def test_an_interval_never_has_its_low_end_above_its_high_end(values, bounds):
    stats = mean_with_ci(values, bounds=bounds)
    assert stats.low <= stats.mean <= stats.high


def test_the_rating_plot_draws_an_interval_given_on_the_wrong_side_of_its_mean():
    from webapp.policies.plots import line_with_band_png

    png = line_with_band_png(x=[0, 1], y=[4.6, 0.5], low=[3.5, None], high=[1.0, 0.9], title="t", xlabel="x", ylabel="y")
    assert png.startswith(b"\x89PNG")


def test_rated_today_counts_judgments_given_in_the_earlier_mode_too(project, annotator, make_completion):
    """The card's "Rated today" is the person's day, not the current mode's: a switch does not reset it."""
    from webapp.annotation.selectors import annotator_progress

    single = make_completion(project, text="a single completion")
    services.lease_next(project=project, annotator=annotator)
    services.rating_create(annotator=annotator, completion=single, score=4)
    assert annotator_progress(project=project, annotator=annotator)["today"] == 1

    project.rating_mode = "pairwise"
    project.save()
    assert annotator_progress(project=project, annotator=annotator)["today"] == 1
    pair = make_pair(project, make_completion, texts=("pair side A", "pair side B"))
    services.lease_next(project=project, annotator=annotator)
    services.comparison_create(annotator=annotator, pair=pair, choice="a")
    assert annotator_progress(project=project, annotator=annotator)["today"] == 2

    project.rating_mode = "likert"
    project.save()
    assert annotator_progress(project=project, annotator=annotator)["today"] == 2


def test_undo_after_the_switch_from_likert_to_thumbs_brings_the_same_item_back_in_thumbs(
    project, annotator, make_completion
):
    """An undone rating's item comes back leased in the mode the project has now, so the card shows it."""
    from webapp.annotation.selectors import lease_held

    rated, other = make_completion(project, text="rated in likert"), make_completion(project, text="another item")
    assert services.lease_next(project=project, annotator=annotator).completion_id == rated.pk
    services.rating_create(annotator=annotator, completion=rated, score=4)
    project.rating_mode = "thumbs"
    project.save()
    assert services.lease_next(project=project, annotator=annotator).completion_id == other.pk

    result = services.judgment_undo(project=project, annotator=annotator)

    assert result.lease is not None and result.lease.completion_id == rated.pk
    assert lease_held(project=project, annotator=annotator).completion_id == rated.pk
    assert services.lease_next(project=project, annotator=annotator).completion_id == rated.pk
    assert list(Lease.objects.filter(annotator=annotator).values_list("completion_id", "rating_mode", "fulfilled")) == [
        (rated.pk, "thumbs", False)
    ]
