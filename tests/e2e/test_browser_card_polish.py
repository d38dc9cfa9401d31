"""The annotator's card after the newcomer tryout: long outputs on a desktop, and a rating key pressed
after the session ended. Debian chromium via Playwright; screenshots go to test-artifacts/."""

import pytest
from playwright.sync_api import expect

from tests.e2e.test_browser_phone import LONG, NESTED_SCROLLERS
from tests.e2e.test_browser_signed_out_skip_undo import annotate_page_on_its_first_of_three_items, sign_out_in_another_tab
from tests.webapp.annotation_helpers import make_pair, make_project, make_rank_group
from webapp.annotation.models import Completion, Rating

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CARD = "#card[data-completion]"


@pytest.mark.parametrize("mode", ["pairwise", "likert", "ranking"])
def test_a_long_output_grows_the_page_on_a_desktop_and_the_keys_reach_its_cut_mark(
    login_page, live_server, tiny_model_dir, models_dir, annotator, make_completion, screenshot, mode
):
    project = make_project(tiny_model_dir, slug=f"long-{mode}", mode=mode, rank_k=3)
    if mode == "pairwise":
        make_pair(project, make_completion, texts=(LONG, LONG.replace("drags", "sags")))
    elif mode == "ranking":
        make_rank_group(project, make_completion, texts=[LONG, "short one", LONG.replace("drags", "sags")])
    else:
        make_completion(project, text=LONG)
    Completion.objects.update(finished=False)  # every output hit the length limit: each ends with the cut mark

    page = login_page(annotator)  # 1280 x 900
    page.goto(f"{live_server.url}/p/{project.slug}/annotate/")
    page.wait_for_selector(CARD)
    assert page.evaluate(NESTED_SCROLLERS) == []  # no box scrolls inside the page
    assert page.evaluate("document.documentElement.scrollHeight") > 900  # the page scrolls instead
    for completion in page.locator("#card .completion").all():
        assert completion.evaluate("el => el.scrollHeight <= el.clientHeight + 1")  # shown whole
    page.keyboard.press("End")
    expect(page.locator("#card .cut").last).to_be_in_viewport()
    if mode == "pairwise":
        page.keyboard.press("Home")
        screenshot(page, "annotate-pairwise-long-desktop")


def test_a_rating_key_pressed_after_signing_out_elsewhere_is_filled_in_again_after_signing_in(
    login_page, live_server, project, annotator, make_completion, screenshot
):
    page, item = annotate_page_on_its_first_of_three_items(login_page, live_server, project, annotator, make_completion)
    page.keyboard.press("c")
    page.keyboard.type("the ending is rushed")
    page.keyboard.press("Escape")

    sign_out_in_another_tab(page, live_server)  # this tab's session ends

    page.keyboard.press("4")
    page.wait_for_url("**/accounts/login/**")
    assert "your last judgment (4 good) was not saved" in page.locator(".flash.warning").inner_text()
    assert Rating.objects.count() == 0
    page.fill("input[name=username]", annotator.username)
    page.fill("input[name=password]", "pw-12345678")
    page.click("button[type=submit]")
    page.wait_for_selector(f'{CARD}[data-completion="{item}"]')  # back on the same item, still held
    notice = page.locator("#card .flash.signed-out").inner_text()
    assert "your last judgment (4 good) was not saved" in notice and "Press 4 to send it again" in notice
    assert page.locator("#card textarea[name=comment]").input_value() == "the ending is rushed"
    screenshot(page, "annotate-signed-out-judgment")

    page.keyboard.press("4")
    page.locator(f'{CARD}:not([data-completion="{item}"])').wait_for()
    rating = Rating.objects.get()
    assert (rating.completion_id, rating.score, rating.comment) == (item, 4, "the ending is rushed")
    assert page.locator("#card .flash.signed-out").count() == 0
