"""The blind version arena in a real browser: vote by keyboard and by button, undo, and the leaderboard."""

import pytest

from webapp.arena import selectors as arena_selectors
from webapp.arena.models import ArenaVote
from webapp.policies import plotfiles
from webapp.policies.models import ModelVersion
from webapp.training.models import VersionSample

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def versions_with_answers(project):
    from webapp.annotation.models import Prompt

    for i in range(3):
        Prompt.objects.create(project=project, text=f"Continue this review: held-out film {i} was", held_out=True)
    v0 = project.served_version
    v1 = ModelVersion.objects.create(project=project, number=1, parent=v0, kind="lora", weights_path="/nowhere")
    for prompt in project.prompts.filter(held_out=True):
        for version, text in ((v0, "a slow, muddled story that never finds its feet."), (v1, "a warm, funny and moving film.")):
            VersionSample.objects.create(
                version=version, prompt=prompt, text=text, token_ids=[1], logprobs=[-1.0], ref_logprobs=[-1.0], finished=True
            )
    return v0, v1


def test_staff_vote_blind_by_key_and_button_undo_and_read_the_leaderboard(login_page, live_server, project, staff_user, screenshot):
    v0, v1 = versions_with_answers(project)
    page = login_page(staff_user)
    page.goto(f"{live_server.url}/p/{project.slug}/arena/")
    card = page.locator("#card[data-vote]")
    card.wait_for()
    assert "version" not in card.inner_text().lower()  # blind: no names
    screenshot(page, "arena")

    first = card.get_attribute("data-vote")
    page.keyboard.press("a")
    page.locator(f"#card[data-vote]:not([data-vote='{first}'])").wait_for()
    second = page.locator("#card").get_attribute("data-vote")
    page.click("button[value=b]")
    page.locator(f"#card[data-vote]:not([data-vote='{second}'])").wait_for()
    page.keyboard.press("u")  # the button vote comes back
    page.locator("#card .flash.undone").wait_for()
    assert page.locator("#card").get_attribute("data-vote") != second
    assert "B (right) is better" in page.locator("#card .flash.undone").inner_text()
    page.keyboard.press("t")
    page.locator("#card .flash.undone").wait_for(state="detached")

    votes = list(arena_selectors.counted_votes(project=project).order_by("voted_at"))
    assert [v.choice for v in votes] == ["a", "tie"]
    assert ArenaVote.objects.filter(undone_at__isnull=False, choice="b").count() == 1
    assert all({v.version_a_id, v.version_b_id} == {v0.pk, v1.pk} for v in votes)

    board = arena_selectors.arena_leaderboard(project=project)
    kind, data = arena_selectors.arena_leaderboard_plot_spec(board=board)
    plotfiles.plot_draw(kind=kind, data=data, slot=f"project-{project.pk}-arena")  # what the worker does
    page.goto(f"{live_server.url}/staff/p/{project.slug}/arena/")
    rows = page.locator("#arena-table tbody tr")
    assert rows.count() == 2
    assert page.locator("#arena-plot img").evaluate("img => img.naturalWidth") > 0
    screenshot(page, "arena-leaderboard")
