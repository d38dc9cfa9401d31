"""The Django admin: judgments are shown but cannot be added, edited or deleted there."""

import pytest
from django.urls import reverse

from webapp.annotation.models import Completion, Rating


@pytest.fixture
def superuser_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", password="pw"))
    return client


def test_a_rating_is_visible_in_the_admin_but_cannot_be_deleted_or_edited(superuser_client, project, make_completion, annotator):
    completion = make_completion(project)
    rating = Rating.objects.create(completion=completion, annotator=annotator, score=4)
    Completion.objects.filter(pk=completion.pk).update(n_ratings=1)

    listing = superuser_client.get(reverse("admin:annotation_rating_changelist"))
    assert listing.status_code == 200 and f"{rating.pk}" in listing.content.decode()
    assert superuser_client.get(reverse("admin:annotation_rating_add")).status_code == 403
    assert superuser_client.post(reverse("admin:annotation_rating_delete", args=[rating.pk]), {"post": "yes"}).status_code == 403
    response = superuser_client.post(
        reverse("admin:annotation_rating_changelist"),
        {"action": "delete_selected", "_selected_action": [rating.pk], "post": "yes"},
    )
    assert response.status_code in (200, 302)  # the bulk action is not offered, so nothing happens
    assert superuser_client.post(reverse("admin:annotation_rating_change", args=[rating.pk]), {"score": 1}).status_code == 403

    rating.refresh_from_db()
    assert rating.score == 4
    assert Completion.objects.get(pk=completion.pk).n_ratings == 1


@pytest.mark.parametrize("model", ["comparison", "ratingrevision"])
def test_comparisons_and_revisions_cannot_be_added_in_the_admin(superuser_client, db, model):
    assert superuser_client.get(reverse(f"admin:annotation_{model}_changelist")).status_code == 200
    assert superuser_client.get(reverse(f"admin:annotation_{model}_add")).status_code == 403
