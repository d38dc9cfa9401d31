"""The annotator's page in each mode, guidelines, undo over htmx, and the staff figures page."""

import re

import krippendorff
import numpy as np
import pytest
from django.urls import reverse

from tests.webapp.annotation_helpers import make_pair, make_project
from webapp.annotation import services
from webapp.annotation.models import Comparison, Lease, Rating, RatingRevision

HTMX = {"HTTP_HX_REQUEST": "true"}
XSS = "<script>alert('x')</script><img src=x onerror=alert(1)>"


def url(name, project, *args):
    return reverse(f"annotation:{name}", args=[project.slug, *args])


@pytest.fixture
def annotator_client(client, annotator):
    client.force_login(annotator)
    return client


def test_guidelines_render_markdown_but_raw_html_and_script_links_stay_text(annotator_client, project):
    project.guidelines = "# Be kind\n\nRate **truthfulness**. <script>alert(1)</script> [click](javascript:alert(2))"
    project.save()
    body = annotator_client.post(url("next", project), follow=True).content.decode()
    assert "<h1>Be kind</h1>" in body and "<strong>truthfulness</strong>" in body
    assert "<script>alert(1)" not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert 'href="javascript:' not in body
    assert '<details class="guidelines"' in body


def test_every_key_is_shown_on_screen_and_in_the_help_overlay(annotator_client, project, make_completion):
    first = make_completion(project)
    make_completion(project)
    body = annotator_client.post(url("next", project), follow=True).content.decode()
    assert 'data-key="u"' not in body  # nothing to undo yet
    annotator_client.post(url("rate", project, first.pk), {"score": "3"}, **HTMX)
    body = annotator_client.post(url("next", project), follow=True).content.decode()
    for key in "12345su?":
        assert f'data-key="{key}"' in body
    # every form that posts disables the card's buttons while its request is in flight
    assert body.count('hx-post=') == body.count('hx-disabled-elt="#card button, #card textarea"') == 3
    assert 'id="help"' in body and "hidden" in body
    for key in ["1", "5", "s", "u", "c", "g", "?"]:
        assert f"<kbd>{key}</kbd>" in body


@pytest.mark.parametrize("per_prompt", [1, 4])
def test_the_card_says_when_a_prompt_comes_back_with_other_answers(annotator_client, project, make_completion, per_prompt):
    project.completions_per_prompt = per_prompt
    project.save(update_fields=["completions_per_prompt"])
    make_completion(project)
    body = annotator_client.post(url("next", project), follow=True).content.decode()
    hint = "The model answers each prompt 4 times, so you may see this prompt again"
    assert (hint in body) == (per_prompt == 4)


def test_progress_shows_todays_count_and_the_remaining_queue(annotator_client, annotator, project, make_completion):
    first, *_ = [make_completion(project) for _ in range(3)]
    annotator_client.post(url("next", project), follow=True)
    body = annotator_client.post(url("rate", project, first.pk), {"score": "3"}, **HTMX).content.decode()
    assert 'id="count-today">1<' in body and 'id="count-queue">1<' in body  # one more after the one shown now


def test_a_thumbs_project_shows_thumb_keys_and_stores_a_thumb_with_its_comment(client, make_user, tiny_model_dir, models_dir, make_completion):
    project = make_project(tiny_model_dir, slug="th", mode="thumbs")
    completion = make_completion(project)
    user = make_user("thumbsy")
    client.force_login(user)
    body = client.post(url("next", project), follow=True).content.decode()
    assert 'name="thumb" value="up" data-key="2"' in body and 'name="thumb" value="down" data-key="1"' in body
    client.post(url("rate", project, completion.pk), {"thumb": "down", "comment": "مرحبا 你好 🎉"}, **HTMX)
    rating = Rating.objects.get()
    assert (rating.thumbs_up, rating.comment) == (False, "مرحبا 你好 🎉")


@pytest.mark.parametrize("a_on_left,pressed,stored", [(True, "left", "a"), (False, "left", "b"), (False, "right", "a")])
def test_pairwise_page_shows_both_sides_and_stores_the_choice_by_completion(
    client, make_user, tiny_model_dir, models_dir, make_completion, a_on_left, pressed, stored
):
    project = make_project(tiny_model_dir, slug="pw", mode="pairwise")
    pair = make_pair(project, make_completion, texts=("text of A", "text of B"))
    user = make_user("pairy")
    client.force_login(user)
    client.post(url("next", project), follow=True)
    Lease.objects.filter(annotator=user).update(a_on_left=a_on_left)
    body = client.post(url("next", project), follow=True).content.decode()
    left, right = ("text of A", "text of B") if a_on_left else ("text of B", "text of A")
    assert body.index(left) < body.index(right)
    for key in "abtx":
        assert f'data-key="{key}"' in body
    client.post(url("rate", project, pair.completion_a_id), {"choice": pressed, "a_on_left": "1"}, **HTMX)
    comparison = Comparison.objects.get()
    assert (comparison.choice, comparison.a_on_left) == (stored, a_on_left)  # the side comes from the lease


def test_undo_over_htmx_brings_the_item_back_with_its_comment_as_text(annotator_client, project, make_completion):
    first = make_completion(project, text="first")
    make_completion(project, text="second")
    annotator_client.post(url("next", project), follow=True)
    annotator_client.post(url("rate", project, first.pk), {"score": "2", "comment": XSS}, **HTMX)
    body = annotator_client.post(url("undo", project), **HTMX).content.decode()
    assert "<html" not in body and f'data-completion="{first.pk}"' in body
    assert "Undone: you had chosen <strong>2</strong>" in body
    assert f'kept in <a href="/p/{project.slug}/annotate/history/">your history</a>, marked undone' in body
    assert XSS not in body and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in body
    assert not Rating.objects.exists() and RatingRevision.objects.get().comment == XSS


@pytest.mark.parametrize("a_on_left,pressed,said", [
    (True, "left", "A is better"), (False, "left", "A is better"), (False, "right", "B is better"), (True, "right", "B is better"),
])
def test_undoing_a_pairwise_choice_names_the_side_as_the_screen_labelled_it(
    client, make_user, tiny_model_dir, models_dir, make_completion, a_on_left, pressed, said
):
    """The card labels the left output A and the right one B whichever completion is where; the undo
    message says what the person pressed in those terms, not the completions' internal A/B."""
    project = make_project(tiny_model_dir, slug="pw", mode="pairwise")
    pair = make_pair(project, make_completion, texts=("text of A", "text of B"))
    user = make_user("pairy")
    client.force_login(user)
    client.post(url("next", project), follow=True)
    Lease.objects.filter(annotator=user).update(a_on_left=a_on_left)
    client.post(url("rate", project, pair.completion_a_id), {"choice": pressed, "a_on_left": "1"}, **HTMX)
    body = client.post(url("undo", project), **HTMX).content.decode()
    assert f"Undone: you had chosen <strong>{said}</strong>" in body


def test_undo_with_nothing_to_undo_says_so(annotator_client, project, make_completion):
    make_completion(project)
    body = annotator_client.post(url("undo", project), **HTMX).content.decode()
    assert "nothing to undo" in body


def test_emoji_right_to_left_and_cjk_text_arrive_intact(annotator_client, project, make_completion):
    prompt = project.prompts.first()
    prompt.text = "שלום עולם — مرحبا بالعالم"
    prompt.save()
    make_completion(project, prompt=prompt, text="这部电影很好看 🎬🍿 — 映画は素晴らしい")
    body = annotator_client.post(url("next", project), follow=True).content.decode()
    assert "שלום עולם — مرحبا بالعالم" in body and "这部电影很好看 🎬🍿 — 映画は素晴らしい" in body


def test_pages_have_no_inline_script_or_style(annotator_client, project, make_completion):
    make_completion(project)
    body = annotator_client.post(url("next", project), follow=True).content.decode()
    assert "style=" not in body and "<style" not in body
    for chunk in body.split("<script")[1:]:
        assert chunk.lstrip().startswith("src=") or ' src="' in chunk.split(">")[0]


def test_annotators_get_403_on_the_figures_page(annotator_client, project):
    assert annotator_client.get(url("figures", project)).status_code == 403


def test_figures_show_counts_medians_and_krippendorffs_alpha(client, staff_user, make_user, project, make_completion):
    project.ratings_per_item = 2
    project.save()
    a, b = make_user("alice"), make_user("bob")
    scores = {a: [1, 2, 4, 5], b: [1, 3, 4, 4]}
    items = [make_completion(project) for _ in range(4)]
    for person, values in scores.items():
        for item, score, seconds in zip(items, values, [2.0, 4.0, 6.0, 100.0]):
            services.rating_create(annotator=person, completion=item, score=score, comment=XSS, seconds_spent=seconds)
    expected = krippendorff.alpha(
        reliability_data=np.array([scores[a], scores[b]], dtype=float), level_of_measurement="ordinal",
        value_domain=[1, 2, 3, 4, 5],
    )
    client.force_login(staff_user)
    body = client.get(url("figures", project)).content.decode()
    assert f"<strong>{expected:.3f}</strong>" in body
    assert "<td>alice</td><td class=\"num\">4</td><td class=\"num\">4</td>" in body
    assert "<td class=\"num\">5.0</td>" in body  # median of 2, 4, 6, 100 seconds
    assert XSS not in body and "&lt;img src=x onerror=alert(1)&gt;" in body
    page = client.post(url("next", project), follow=True).content.decode()
    assert reverse("annotation:figures", args=[project.slug]) in page


def test_figures_explain_when_nobody_overlaps_yet(client, staff_user, annotator, project, make_completion):
    services.rating_create(annotator=annotator, completion=make_completion(project), score=3)
    client.force_login(staff_user)
    body = client.get(url("figures", project)).content.decode()
    assert "No item has been judged by two people yet." in body


# --- What one card and one submit cost ------------------------------------------------


def test_the_next_card_and_a_submit_each_take_a_bounded_number_of_queries(
    annotator_client, project, make_completion, django_assert_max_num_queries
):
    for _ in range(30):
        make_completion(project)
    annotator_client.post(url("next", project), **HTMX)  # leases an item (and runs the throttled upkeep)
    # session, user, the membership with its project, the held lease with its card, the progress line
    with django_assert_max_num_queries(5):
        body = annotator_client.get(url("card", project), **HTMX).content.decode()
    item = int(re.search(r'data-completion="(\d+)"', body).group(1))
    # session, user, the membership with its project, the item, the transaction; the rating:
    # its savepoint, lease locked and fulfilled, insert, counter; the next lease: held?,
    # candidates, insert, its card; the progress line
    with django_assert_max_num_queries(16):
        body = annotator_client.post(url("rate", project, item), {"score": "3"}, **HTMX).content.decode()
    assert 'class="flash error"' not in body and Rating.objects.get().completion_id == item
    assert 'id="count-today">1<' in body and 'id="count-queue">28<' in body


def test_a_long_queue_shows_its_count_capped_with_a_plus(annotator_client, project, make_completion, monkeypatch):
    from webapp.annotation import selectors

    monkeypatch.setattr(selectors, "QUEUE_COUNT_CAP", 3)
    for _ in range(5):
        make_completion(project)
    body = annotator_client.post(url("next", project), **HTMX).content.decode()
    assert 'id="count-queue">3+<' in body


def rater_of(card: str) -> str:
    """The rate form's signed annotator id."""
    return re.search(r'<input type="hidden" name="rater" value="([^"]+)">', card)[1]


def test_a_rating_sent_after_signing_out_keeps_only_its_form_fields_and_says_when_its_item_went_back(
    client, annotator, project, make_completion
):
    from datetime import timedelta

    from django.contrib.sessions.models import Session
    from django.utils import timezone

    from webapp.annotation.views import SIGNED_OUT_KEY

    item = make_completion(project)
    client.force_login(annotator)
    rater = rater_of(client.post(url("next", project), **HTMX).content.decode())
    client.logout()  # as another tab does

    oversized = {"score": "5", "rater": rater, **{f"rank_{i}": "9" * 200 for i in range(30)}}  # form fields, 6 KB
    for bad in (oversized, {"score": "5"}, {"score": "5", "rater": rater[:-1]}):  # no rater, a forged one
        assert client.post(url("rate", project, item.pk), bad).status_code == 302
        assert not Session.objects.exists()  # nothing kept: no session row for this anonymous POST
    crafted = client.post(url("rate", project, item.pk), {"score": "²", "rater": rater})  # a digit int() refuses
    assert crafted.status_code == 302 and client.session[SIGNED_OUT_KEY]["post"] == {"score": "²"}
    assert "your last judgment (your judgment) was not saved" in client.get(crafted["Location"]).content.decode()

    post = {"score": "5", "comment": "good <b>ending</b>", "next": "https://evil.example/", "evil": "x" * 5000}
    post["rater"] = rater
    page = f"http://testserver/p/{project.slug}/annotate/"
    response = client.post(url("rate", project, item.pk), post, HTTP_HX_CURRENT_URL=page, **HTMX)
    assert response["HX-Redirect"] == f"/accounts/login/?next=/p/{project.slug}/annotate/"  # next unchanged
    assert client.session[SIGNED_OUT_KEY] == {
        "slug": project.slug, "action": "rate", "completion_id": item.pk, "annotator": annotator.pk,
        "post": {"score": "5", "comment": "good <b>ending</b>"},
    }
    login_page = client.get(response["HX-Redirect"]).content.decode()
    assert "your last judgment (5 great) was not saved" in login_page
    plain = client.post(url("rate", project, item.pk), {"score": "5", "rater": rater})  # the form without script
    assert plain["Location"] == f"/accounts/login/?next=/p/{project.slug}/annotate/"  # not the POST-only address
    client.get(plain["Location"])

    Lease.objects.update(expires_at=timezone.now() - timedelta(seconds=1))  # the item went back meanwhile
    client.force_login(annotator)  # login keeps the anonymous session's data
    body = client.get(url("annotate", project)).content.decode()
    assert "your last judgment (5 great) was not saved, and its item is no longer held for you" in body
    assert SIGNED_OUT_KEY not in client.session and not Rating.objects.exists()
    assert "was not saved" not in client.get(url("annotate", project)).content.decode()  # said once


def test_a_judgment_kept_after_signing_out_is_filled_in_again_for_its_annotator_only(
    client, annotator, make_user, project, make_completion
):
    """A shared workstation: A's session ended, A's rating was kept, B signs in on the same browser."""
    from datetime import timedelta

    from django.utils import timezone

    from webapp.annotation.views import SIGNED_OUT_KEY

    item = make_completion(project)
    other = make_user("bee")
    kept = {"score": "4", "comment": "the ending is rushed"}

    def signed_out_rating(person):
        client.force_login(person)
        rater = rater_of(client.post(url("next", project), **HTMX).content.decode())
        client.logout()
        login_page = client.get(client.post(url("rate", project, item.pk), {**kept, "rater": rater})["Location"])
        assert "your last judgment (4 good) was not saved" in login_page.content.decode()  # the person at the keys

    signed_out_rating(annotator)
    Lease.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    services.lease_next(project=project, annotator=other)  # B holds A's item now
    client.force_login(other)  # login keeps the anonymous session's data
    body = client.get(url("annotate", project)).content.decode()
    assert f'data-completion="{item.pk}"' in body
    assert "the ending is rushed" not in body and "was not saved" not in body  # dropped, nobody named
    assert SIGNED_OUT_KEY not in client.session

    Lease.objects.filter(annotator=other).delete()
    signed_out_rating(annotator)
    client.force_login(annotator)
    body = client.get(url("annotate", project)).content.decode()
    assert "the ending is rushed</textarea>" in body  # A's card: filled in again
    assert "your last judgment (<strong>4 good</strong>) was not saved" in body
    assert not Rating.objects.exists()


def test_a_skip_sent_after_signing_out_is_said_on_the_login_page_and_offered_again_on_its_card(
    client, annotator, make_user, project, make_completion
):
    from datetime import timedelta

    from django.utils import timezone

    from webapp.annotation.models import Skip
    from webapp.annotation.views import SIGNED_OUT_KEY

    item = make_completion(project)
    client.force_login(annotator)
    card = client.post(url("next", project), **HTMX).content.decode()
    assert card.count(f'name="rater" value="{rater_of(card)}"') == 2  # the rate form's and the skip form's
    client.logout()  # as another tab does

    page = f"http://testserver/p/{project.slug}/annotate/"
    response = client.post(url("skip", project, item.pk), {"rater": rater_of(card)}, HTTP_HX_CURRENT_URL=page, **HTMX)
    assert response["HX-Redirect"] == f"/accounts/login/?next=/p/{project.slug}/annotate/"
    assert "your skip was not saved. Sign in again to skip it" in client.get(response["HX-Redirect"]).content.decode()
    client.force_login(annotator)  # login keeps the anonymous session's data
    body = client.get(url("annotate", project)).content.decode()
    assert f'data-completion="{item.pk}"' in body
    assert "your skip was not saved. Press <kbd>s</kbd> to skip this item again" in body
    assert SIGNED_OUT_KEY not in client.session and not Skip.objects.exists()
    assert "was not saved" not in client.get(url("annotate", project)).content.decode()  # said once

    client.logout()
    client.post(url("skip", project, item.pk), {"rater": rater_of(card)})
    Lease.objects.update(expires_at=timezone.now() - timedelta(seconds=1))  # the item went back meanwhile
    services.lease_next(project=project, annotator=make_user("bee"))
    client.force_login(annotator)
    body = client.get(url("annotate", project)).content.decode()
    assert "your skip was not saved, and its item is no longer held for you" in body


def test_an_undo_sent_after_signing_out_is_said_on_the_login_page_and_offered_again(
    client, annotator, project, make_completion
):
    from datetime import timedelta

    from webapp.annotation.views import SIGNED_OUT_KEY

    item = make_completion(project)
    make_completion(project)
    client.force_login(annotator)
    client.post(url("next", project), **HTMX)
    card = client.post(url("rate", project, item.pk), {"score": "2"}, **HTMX).content.decode()
    assert card.count(f'name="rater" value="{rater_of(card)}"') == 3  # rate, skip and undo forms
    client.logout()

    response = client.post(url("undo", project), {"rater": rater_of(card)})
    assert response["Location"] == f"/accounts/login/?next=/p/{project.slug}/annotate/"
    assert "your undo was not done. Sign in again" in client.get(response["Location"]).content.decode()
    client.force_login(annotator)
    body = client.get(url("annotate", project)).content.decode()
    assert "your undo was not done: press <kbd>u</kbd> to undo your last judgment or skip now" in body
    assert 'class="flash warning signed-out"' in body.split('id="card"')[1]  # on the card: gone once it is swapped
    assert SIGNED_OUT_KEY not in client.session and not RatingRevision.objects.exists()

    client.logout()
    client.post(url("undo", project), {"rater": rater_of(card)})
    Rating.objects.update(created_at=Rating.objects.get().created_at - timedelta(minutes=11))
    Lease.objects.all().delete()  # nothing held: the card that asks for the next item says it too
    client.force_login(annotator)
    body = client.get(url("annotate", project)).content.decode()
    assert "your undo was not done: there is nothing left to undo now" in body
    assert "not done" not in client.get(url("annotate", project)).content.decode()  # said once
