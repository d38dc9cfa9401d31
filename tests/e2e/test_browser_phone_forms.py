"""Phone-sized screens on the pages with forms: nothing sticks out sideways (a new token's secret,
the versions page's menus); reloading the page that shows a new token's secret creates no other token."""

import pytest

from webapp.accounts.models import ApiToken

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WIDTH = 320


def test_a_new_token_and_the_versions_page_fit_a_320_px_screen(login_page, live_server, project, staff_user):
    page = login_page(staff_user, width=WIDTH, height=740)
    page.goto(f"{live_server.url}/accounts/tokens/")
    page.fill("input[name=name]", "phone script")
    page.click("form[action$='/tokens/new/'] button")
    page.wait_for_selector("#new-token-secret")
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
    secret = page.locator("#new-token-secret")
    assert secret.evaluate("el => el.getBoundingClientRect().right") <= WIDTH  # the whole secret is on screen
    assert secret.inner_text().startswith("rl_")
    page.reload()  # posts the same form again: its nonce is on the token it created, so it creates no second one
    page.wait_for_selector("#token-already-created")
    assert page.locator("#new-token-secret").count() == 0  # the secret was shown once
    assert list(ApiToken.objects.filter(user=staff_user).values_list("name", flat=True)) == ["phone script"]

    page.goto(f"{live_server.url}/staff/p/{project.slug}/versions/")
    page.wait_for_selector("#compare-form")
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH


def test_the_new_project_form_fits_a_320_px_screen(login_page, live_server, staff_user):
    # The rubric rows sit in a <fieldset>, whose default min-width is its content's: the table's
    # three inputs pushed the whole page sideways (to 759 px at 360 px) instead of scrolling inside
    # the table as the setup page's rubric table does.
    page = login_page(staff_user, width=WIDTH, height=740)
    page.goto(f"{live_server.url}/projects/new/")
    page.wait_for_selector("#new-rubric")
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
    assert page.locator("#new-rubric").evaluate("el => el.getBoundingClientRect().right") <= WIDTH
    page.fill("#id_name_0", "helpful")  # the rows are still reachable: the table scrolls inside
    assert page.locator("#id_name_0").is_visible()


def test_a_long_unbroken_project_title_wraps_in_the_top_bar(login_page, live_server, project, staff_user):
    # The title sits in the top bar's flex row, whose items are as wide as their longest word: a
    # 200-character title with no space (the form's limit) pushed every page of the project to
    # about 1,800 px on a 1,280 px screen.
    project.title = "Ü" * 200
    project.save(update_fields=["title"])
    page = login_page(staff_user)
    for path in ("/", f"/p/{project.slug}/annotate/", f"/staff/p/{project.slug}/setup/"):
        page.goto(f"{live_server.url}{path}")
        page.wait_for_selector("main")
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280, path
