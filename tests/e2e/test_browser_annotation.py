"""The annotator's page in a real browser (Debian chromium via Playwright), keyboard only.

The database is checked afterwards: it must hold exactly what was done.
Screenshots go to test-artifacts/.
"""

import pytest

from tests.webapp.annotation_helpers import make_pair, make_project
from webapp.annotation.models import Comparison, Rating, RatingRevision, Skip

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

XSS = "<script>alert('xss')</script><img src=x onerror=alert(1)>"
CARD = "#card[data-completion]"


def current_item(page) -> int:
    return int(page.get_attribute(CARD, "data-completion"))


def press_and_wait_for_another_item(page, key: str) -> int:
    before = current_item(page)
    page.keyboard.press(key)
    page.locator(f'{CARD}:not([data-completion="{before}"])').wait_for()
    return current_item(page)


def collect_dialogs(page) -> list:
    fired = []
    page.on("dialog", lambda dialog: fired.append(dialog.message))
    return fired


def test_an_annotator_rates_ten_undoes_one_skips_one_by_keyboard_and_the_database_holds_exactly_that(
    login_page, live_server, project, annotator, make_completion, screenshot
):
    for i in range(14):
        make_completion(project, text=f"completion number {i}: {'a long line that wraps ' * (3 if i % 2 else 40)}")
    page = login_page(annotator)
    dialogs = collect_dialogs(page)
    page.goto(f"{live_server.url}/p/{project.slug}/annotate/")
    page.wait_for_selector(CARD)
    page.evaluate("window.__marker = 'same page'")

    rated = []
    for i in range(10):
        item, score = current_item(page), i % 5 + 1
        if i == 3:  # a comment, typed without the mouse
            page.keyboard.press("c")
            page.keyboard.type("too long 🙂")
            page.keyboard.press("Escape")
        rated.append((item, score))
        if i == 0:
            screenshot(page, "annotate-likert-desktop")
        press_and_wait_for_another_item(page, str(score))
    assert page.locator("#count-today").inner_text() == "10"

    page.keyboard.press("u")
    page.locator(f'{CARD}[data-completion="{rated[-1][0]}"]').wait_for()
    assert "Undone: you had chosen" in page.locator("#card .flash").inner_text()
    screenshot(page, "annotate-after-undo")
    skipped = press_and_wait_for_another_item(page, "s") and rated[-1][0]

    page.keyboard.press("?")
    page.locator("#help").wait_for(state="visible")
    screenshot(page, "annotate-help-overlay")
    page.keyboard.press("Escape")
    page.locator("#help").wait_for(state="hidden")
    assert page.evaluate("window.__marker") == "same page"  # htmx swaps, never a reload
    assert not dialogs

    assert sorted(Rating.objects.values_list("completion_id", "score")) == sorted(rated[:-1])
    assert Rating.objects.get(completion_id=rated[3][0]).comment == "too long 🙂"
    assert list(RatingRevision.objects.values_list("completion_id", "score")) == [rated[-1]]
    assert list(Skip.objects.values_list("completion_id", flat=True)) == [skipped]
    assert set(Rating.objects.values_list("annotator_id", flat=True)) == {annotator.pk}

    # An expired CSRF token: a clear "reload" message, the card stays, nothing is stored.
    page.context.clear_cookies(name="csrftoken")
    stuck = current_item(page)
    page.keyboard.press("4")
    assert "Reload the page" in page.locator("#flash .flash.error").inner_text()
    assert current_item(page) == stuck and Rating.objects.count() == 9


def test_an_annotator_compares_three_pairs_by_keyboard_on_a_phone_sized_screen(
    login_page, live_server, tiny_model_dir, models_dir, annotator, make_completion, screenshot
):
    project = make_project(tiny_model_dir, slug="pw", mode="pairwise")
    prompts = list(project.prompts.all())
    pairs = {
        make_pair(project, make_completion, prompt=prompts[i], texts=(f"answer A{i} 这很好 🎉", f"answer B{i} שלום")).completion_a_id
        for i in range(4)
    }
    page = login_page(annotator, width=320, height=700)
    dialogs = collect_dialogs(page)
    page.goto(f"{live_server.url}/p/{project.slug}/annotate/")
    page.wait_for_selector(CARD)
    assert page.evaluate("document.documentElement.scrollWidth") <= 320  # nothing sticks out sideways
    screenshot(page, "annotate-pairwise-320px")

    expected = {}
    for key in ["a", "b", "t"]:
        anchor = current_item(page)
        left_id = int(page.get_attribute(".side-left", "data-completion-id"))
        a_on_left = left_id == anchor
        expected[anchor] = ({"a": "a" if a_on_left else "b", "b": "b" if a_on_left else "a", "t": "tie"}[key], a_on_left)
        press_and_wait_for_another_item(page, key)
    assert not dialogs

    stored = {c.pair.completion_a_id: (c.choice, c.a_on_left) for c in Comparison.objects.select_related("pair")}
    assert stored == expected and set(stored) < pairs
    assert Rating.objects.count() == 6 and not Rating.objects.filter(comparison__isnull=True).exists()


def test_script_and_markup_in_every_text_field_show_as_text_and_no_dialog_fires(
    login_page, live_server, project, annotator, staff_user, make_completion, screenshot
):
    project.title = f"Title {XSS}"
    project.guidelines = f"Guidelines {XSS} [link](javascript:alert(3))"
    project.save()
    prompt = project.prompts.first()
    prompt.text = f"Prompt {XSS}"
    prompt.save()
    make_completion(project, prompt=prompt, text=f"Completion {XSS}")
    make_completion(project, prompt=prompt, text="another")

    page = login_page(annotator)
    dialogs = collect_dialogs(page)
    page.goto(f"{live_server.url}/p/{project.slug}/annotate/")
    page.wait_for_selector(CARD)
    page.keyboard.press("g")
    assert XSS in page.locator(".guidelines-text").inner_text()
    assert XSS in page.locator(".prompt").inner_text() and XSS in page.locator(".completion").inner_text()
    assert XSS in page.locator(".crumb").inner_text()
    assert page.locator("#card img, .guidelines-text a[href^=javascript]").count() == 0
    page.keyboard.press("c")
    page.keyboard.type(f"Comment {XSS}")
    page.keyboard.press("Escape")
    press_and_wait_for_another_item(page, "2")
    page.keyboard.press("u")  # the undone comment comes back into the comment box, as text
    page.locator("#card .flash.undone").wait_for()
    assert page.locator("textarea[name=comment]").input_value() == f"Comment {XSS}"
    press_and_wait_for_another_item(page, "2")
    screenshot(page, "xss-annotator")

    staff = login_page(staff_user)
    dialogs += collect_dialogs(staff)
    staff.goto(f"{live_server.url}/p/{project.slug}/figures/")
    assert f"Comment {XSS}" in staff.locator("#comments").inner_text()
    screenshot(staff, "xss-figures")
    # The source filter: production feedback only (there is none), then annotators' again.
    staff.select_option("#source-filter select[name=source]", "production")
    staff.click("#source-filter button[type=submit]")
    staff.wait_for_url("**source=production")
    assert "No comments yet." in staff.locator("#comments").inner_text()
    staff.select_option("#source-filter select[name=source]", "annotator")
    staff.click("#source-filter button[type=submit]")
    staff.wait_for_url("**source=annotator")
    assert f"Comment {XSS}" in staff.locator("#comments").inner_text()
    assert not dialogs


def test_the_answer_to_a_rating_already_carries_the_next_card_so_no_other_request_is_made(
    login_page, live_server, project, annotator, make_completion
):
    """The next card is prefetched with the rating: one POST per keypress, the card that
    comes back is the next item (already leased), and the card never names the version."""
    for i in range(6):
        make_completion(project, text=f"item {i}")
    page = login_page(annotator)
    page.goto(f"{live_server.url}/p/{project.slug}/annotate/")
    page.wait_for_selector(CARD)
    requests = []
    page.on("request", lambda r: requests.append((r.method, r.url.removeprefix(live_server.url))))

    waits_ms = []
    for key in "12345":
        assert "version" not in page.locator("#card").inner_text().lower()
        item = current_item(page)
        started = page.evaluate("performance.now()")
        press_and_wait_for_another_item(page, key)
        waits_ms.append(page.evaluate("performance.now()") - started)
        assert Rating.objects.filter(completion_id=item, annotator=annotator).exists()

    slug = project.slug
    assert [m for m, _ in requests] == ["POST"] * 5
    assert all(url.startswith(f"/p/{slug}/annotate/") and url.endswith("/rate/") for _, url in requests)
    assert max(waits_ms) < 2000, waits_ms  # generous: the point is one round trip, not a benchmark
