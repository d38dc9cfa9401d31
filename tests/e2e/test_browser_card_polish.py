"""The annotator's card after the newcomer tryout: long outputs on a desktop, and a rating key pressed
after the session ended. Debian chromium via Playwright; screenshots go to test-artifacts/."""

import pytest
from playwright.sync_api import expect

from tests.e2e.test_browser_phone import LONG, NESTED_SCROLLERS
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

