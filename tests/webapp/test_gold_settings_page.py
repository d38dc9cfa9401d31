"""Staff turn gold checks on from the figures page (where gold items are managed), not only in the
Django admin: the gold item rate and the accuracy rule, validated and audited like the other settings."""

from webapp.policies.models import AuditEvent, Project


def _url(project, suffix=""):
    return f"/p/{project.slug}/figures/{suffix}"


GOLD = {"gold_rate": "0.2", "gold_min_accuracy": "0.8", "gold_min_answers": "3", "gold_low_weight": "0.5"}


def test_staff_set_the_gold_item_rate_on_the_figures_page_and_it_is_audited(project, staff_client, staff_user):
    page = staff_client.get(_url(project)).content.decode()
    assert 'id="gold-settings"' in page and 'name="gold_rate"' in page and 'max="1.0"' in page

    response = staff_client.post(_url(project, "gold/settings/"), GOLD)

    assert response.status_code == 302 and response["Location"].endswith("#gold-settings")
    project = Project.objects.get(pk=project.pk)
    assert (project.gold_rate, project.gold_min_accuracy, project.gold_min_answers, project.gold_low_weight) == (0.2, 0.8, 3, 0.5)
    event = AuditEvent.objects.get(action=AuditEvent.Action.SETTINGS, target="gold settings")
    assert event.actor == staff_user and event.detail["gold_rate"] == [0.0, 0.2]
    assert "20% of the cards" in staff_client.get(_url(project)).content.decode()


def test_a_rate_out_of_range_is_refused_next_to_its_field_and_nothing_changes(project, staff_client):
    response = staff_client.post(_url(project, "gold/settings/"), {**GOLD, "gold_rate": "1.5"})
    assert response.status_code == 400 and "less than or equal to 1" in response.content.decode()
    assert Project.objects.get(pk=project.pk).gold_rate == 0.0
    assert not AuditEvent.objects.filter(target="gold settings").exists()


def test_annotators_cannot_change_gold_settings(project, annotator, client):
    client.force_login(annotator)
    assert client.post(_url(project, "gold/settings/"), GOLD).status_code == 403
    assert Project.objects.get(pk=project.pk).gold_rate == 0.0
