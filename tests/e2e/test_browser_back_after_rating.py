"""Back to the annotate page after rating shows the item held now, never the card already rated.

The page is sent with ``Cache-Control: no-store``; without it, Chromium's Back served the annotate
page's HTML from its cache, with the card it first showed (an item rated since).
"""

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CARD = "#card[data-completion]"


def test_back_after_rating_and_leaving_shows_the_next_item_not_the_rated_one(
    login_page, live_server, project, annotator, make_completion
):
    for i in range(3):
        make_completion(project, text=f"completion number {i}")
    page = login_page(annotator)
    annotate = f"{live_server.url}/p/{project.slug}/annotate/"
    page.goto(annotate)
    page.wait_for_selector(CARD)
    page.reload()  # the page's own HTML now carries the held item's card
    first = page.get_attribute(CARD, "data-completion")

    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("4")
    page.locator(f'{CARD}:not([data-completion="{first}"])').wait_for()
    second = page.get_attribute(CARD, "data-completion")

    page.goto(f"{live_server.url}/p/{project.slug}/annotate/history/")
    page.go_back()
    page.wait_for_selector(CARD)
    assert page.get_attribute(CARD, "data-completion") == second
    assert page.locator(".flash.error").count() == 0
