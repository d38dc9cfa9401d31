"""The Django admin: judgments are shown but cannot be added, edited or deleted there."""

import hashlib

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


# --- Adding prompts by hand (issue 14: input) ------------------------------------------------------


def _add_prompt(client, project, text, **extra):
    return client.post(
        reverse("admin:annotation_prompt_add"),
        {"project": project.pk, "text": text, "source": extra.get("source", ""), **({"held_out": "on"} if extra.get("held_out") else {})},
    )


def test_prompts_added_in_the_admin_get_their_text_hash_and_never_500(superuser_client, project):
    from webapp.annotation.models import Prompt

    for text in ("A first prompt typed by hand", "A second prompt typed by hand"):
        response = _add_prompt(superuser_client, project, text)
        assert response.status_code == 302, response.content.decode()[:2000]
        prompt = Prompt.objects.get(project=project, text=text)
        assert prompt.text_sha256 == hashlib.sha256(text.encode()).hexdigest()


def test_a_prompt_the_project_imported_already_is_a_form_error_in_the_admin(superuser_client, project, tmp_path):
    from webapp.annotation.models import Prompt
    from webapp.annotation.services import prompts_import

    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "Imported from a file"}\n', encoding="utf-8")
    prompts_import(project=project, path=path)
    before = Prompt.objects.filter(project=project).count()
    for text in ("Imported from a file", "  Imported from a file\n"):
        response = _add_prompt(superuser_client, project, text)
        assert response.status_code == 200
        assert "This project has this prompt already." in response.content.decode()
    assert Prompt.objects.filter(project=project).count() == before


def test_a_prompt_added_in_the_admin_is_counted_as_a_duplicate_by_a_later_import(superuser_client, project, tmp_path):
    from webapp.annotation.services import prompts_import

    assert _add_prompt(superuser_client, project, "Typed by hand first").status_code == 302
    path = tmp_path / "p.csv"
    path.write_text("text\nTyped by hand first\nSomething new\n", encoding="utf-8")
    result = prompts_import(project=project, path=path)
    assert (result.created, result.duplicates) == (1, 1)


def test_an_empty_or_over_long_prompt_is_a_form_error_in_the_admin(superuser_client, project):
    from webapp.annotation.models import PROMPT_MAX_CHARS

    assert "A prompt needs some text." in _add_prompt(superuser_client, project, "   ").content.decode()
    too_long = _add_prompt(superuser_client, project, "x" * (PROMPT_MAX_CHARS + 1))
    assert too_long.status_code == 200 and f"the limit is {PROMPT_MAX_CHARS}" in too_long.content.decode()


def test_changing_a_prompt_text_in_the_admin_moves_its_hash(superuser_client, project):
    from webapp.annotation.models import Prompt

    prompt = Prompt.objects.filter(project=project).first()
    response = superuser_client.post(
        reverse("admin:annotation_prompt_change", args=[prompt.pk]),
        {"project": project.pk, "text": "Edited text", "source": "", "held_out": ""},
    )
    assert response.status_code == 302
    prompt.refresh_from_db()
    assert prompt.text_sha256 == hashlib.sha256(b"Edited text").hexdigest()


def test_two_people_adding_the_same_prompt_at_once_get_a_message_not_a_500(superuser_client, project, monkeypatch):
    from webapp.annotation.models import Prompt

    assert _add_prompt(superuser_client, project, "Typed twice at once").status_code == 302
    monkeypatch.setattr(Prompt, "clean", lambda self: None)  # the second passed its check before the first saved
    response = _add_prompt(superuser_client, project, "Typed twice at once")
    assert response.status_code == 302
    assert Prompt.objects.filter(project=project, text="Typed twice at once").count() == 1
    page = superuser_client.get(response["Location"]).content.decode()
    assert "This project has this prompt already (saved a moment ago)" in page
