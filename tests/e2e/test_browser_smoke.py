"""The annotator page in a real browser: keys rate, htmx swaps, no full reload."""

import pytest

from webapp.annotation.models import Rating

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_annotator_rates_by_keyboard_and_the_next_item_swaps_in(
    login_page, live_server, project, annotator, make_completion, screenshot
):
    for i in range(3):
        make_completion(project, text=f"completion number {i} <b>not bold</b>")
    page = login_page(annotator)
    page.goto(f"{live_server.url}/p/{project.slug}/annotate/")
    page.wait_for_selector("#card[data-completion]")
    first = page.get_attribute("#card", "data-completion")
    page.evaluate("window.__marker = 'same page'")
    page.keyboard.press("4")
    page.locator(f'#card[data-completion]:not([data-completion="{first}"])').wait_for()
    assert page.evaluate("window.__marker") == "same page"  # swapped by htmx, not reloaded
    assert page.locator(".completion").inner_text().count("<b>not bold</b>") == 1
    screenshot(page, "annotate-desktop")
    rating = Rating.objects.get()
    assert (rating.completion_id, rating.score) == (int(first), 4)
