"""Keys pressed on a card whose session ended (signed out in another tab): a skip and an undo are
remembered as a rating is (tests/e2e/test_browser_card_polish.py). Debian chromium via Playwright."""

import pytest

from webapp.annotation.models import Skip

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CARD = "#card[data-completion]"


def sign_out_in_another_tab(page, live_server):
    other_tab = page.context.new_page()
    other_tab.goto(f"{live_server.url}/")
    other_tab.locator("form[action*=logout] button").click()
    other_tab.wait_for_load_state("networkidle")
    other_tab.close()


def annotate_page_on_its_first_of_three_items(login_page, live_server, project, annotator, make_completion):
    """``(page, item id)``: the annotator signed in on the annotate page, holding the first of three items."""
    for i in range(3):
        make_completion(project, text=f"completion {i}")
    page = login_page(annotator)
    page.goto(f"{live_server.url}/p/{project.slug}/annotate/")
    page.wait_for_selector(CARD)
    return page, int(page.get_attribute(CARD, "data-completion"))


def sign_in_here(page, user):
    page.fill("input[name=username]", user.username)
    page.fill("input[name=password]", "pw-12345678")
    page.click("button[type=submit]")


def test_skip_and_undo_keys_pressed_after_signing_out_elsewhere_are_offered_again_after_signing_in(
    login_page, live_server, project, annotator, make_completion
):
    page, item = annotate_page_on_its_first_of_three_items(login_page, live_server, project, annotator, make_completion)

    sign_out_in_another_tab(page, live_server)
    page.keyboard.press("s")
    page.wait_for_url("**/accounts/login/**")
    assert "your skip was not saved" in page.locator(".flash.warning").inner_text()
    sign_in_here(page, annotator)
    page.wait_for_selector(f'{CARD}[data-completion="{item}"]')  # the same item, still held
    assert "Press s to skip this item again" in page.locator("#card .flash.signed-out").inner_text()
    assert not Skip.objects.exists()
    page.keyboard.press("s")
    page.locator(f'{CARD}:not([data-completion="{item}"])').wait_for()
    assert Skip.objects.get().completion_id == item

    sign_out_in_another_tab(page, live_server)
    page.keyboard.press("u")
    page.wait_for_url("**/accounts/login/**")
    assert "your undo was not done" in page.locator(".flash.warning").inner_text()
    sign_in_here(page, annotator)
    page.wait_for_selector(CARD)
    assert "press u to undo your last judgment or skip now" in page.locator("#card .flash.signed-out").inner_text()
    page.keyboard.press("u")
    page.wait_for_selector(f'{CARD}[data-completion="{item}"]')  # the skip undone: its item is back
    assert not Skip.objects.exists() and page.locator("#card .flash.signed-out").count() == 0

