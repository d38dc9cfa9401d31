"""The annotate page and its cards are never stored (``Cache-Control: no-store``): Back after rating
must fetch the page again and show the item held now, not a card already rated from the cache."""

from django.urls import reverse

HTMX = {"HTTP_HX_REQUEST": "true"}


def _no_store(response) -> bool:
    return "no-store" in response.get("Cache-Control", "")


def test_the_full_annotate_page_and_every_card_answer_are_never_stored(client, project, annotator, make_completion):
    a, b, c = (make_completion(project, text=f"output {n}") for n in "abc")
    client.force_login(annotator)
    slug = project.slug
    client.post(reverse("annotation:next", args=[slug]), **HTMX)

    page = client.get(reverse("annotation:annotate", args=[slug]))
    assert page.status_code == 200 and f'data-completion="{a.pk}"' in page.content.decode()
    assert _no_store(page)
    assert _no_store(client.get(reverse("annotation:card", args=[slug])))  # a reload of the card URL: the full page
    assert _no_store(client.post(reverse("annotation:next", args=[slug])))  # without htmx: a redirect to the page
    assert _no_store(client.post(reverse("annotation:rate", args=[slug, a.pk]), {"score": "4"}))
    assert _no_store(client.post(reverse("annotation:skip", args=[slug, b.pk])))
    assert _no_store(client.post(reverse("annotation:undo", args=[slug])))
