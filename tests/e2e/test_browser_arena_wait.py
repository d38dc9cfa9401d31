"""The "waiting for the arena" banner in a real browser: the versions page says a newer version waits
for votes (so far / needed), staff follow its link to the arena, vote by keyboard, and the count moves.

Screenshot: test-artifacts/versions-arena-wait.png (copied to docs/ by `make screenshots`).
"""

import pytest
from test_browser_arena import versions_with_answers

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_versions_page_says_a_version_waits_for_the_arena_and_counts_the_votes(login_page, live_server, project, staff_user, screenshot):
    project.arena_required = True
    project.arena_min_votes = 3
    project.save(update_fields=["arena_required", "arena_min_votes"])
    versions_with_answers(project)
    page = login_page(staff_user)
    page.goto(f"{live_server.url}/staff/p/{project.slug}/versions/")
    banner = page.locator("#arena-wait-1")
    assert "v1 is waiting for the arena: 0 of 3 votes against v0 so far (3 more needed)" in " ".join(banner.inner_text().split())
    assert (banner.get_attribute("data-votes"), banner.get_attribute("data-needed")) == ("0", "3")
    screenshot(page, "versions-arena-wait")

    banner.get_by_role("link", name="Vote in the arena").click()
    # Wait for the arena page's load event: the keys script is deferred (see test_browser_compare).
    page.wait_for_url(f"**/p/{project.slug}/arena/")
    card = page.locator("#card[data-vote]")
    card.wait_for()
    first = card.get_attribute("data-vote")
    page.keyboard.press("t")
    page.locator(f"#card[data-vote]:not([data-vote='{first}'])").wait_for()
    page.goto(f"{live_server.url}/staff/p/{project.slug}/versions/")
    assert page.locator("#arena-wait-1").get_attribute("data-votes") == "1"
    assert "1 of 3 votes" in page.locator("#arena-wait-1").inner_text()
