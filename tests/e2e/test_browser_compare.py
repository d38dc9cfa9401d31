"""The compare page in a real browser: two versions' answers with a word-level diff, and a blind arena
vote started from there (here "both bad", by keyboard)."""

import pytest

from webapp.arena.models import ArenaVote
from webapp.policies.models import ModelVersion
from webapp.training.models import VersionSample

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ANSWERS = (
    "The pacing drags in the middle, but the last act earns every tear it asks for.",
    "The pacing sags in the middle, yet the final act earns every tear it asks for.",
)


def test_staff_read_the_word_diff_and_vote_both_bad_blind_from_the_compare_page(
    login_page, live_server, project, staff_user, screenshot
):
    held_out = project.prompts.get(held_out=True)
    v0 = project.served_version
    v1 = ModelVersion.objects.create(project=project, number=1, parent=v0, kind="lora", weights_path="/nowhere")
    for version, text in zip((v0, v1), ANSWERS):
        VersionSample.objects.create(version=version, prompt=held_out, text=text, token_ids=[1], logprobs=[-1.0],
                                     ref_logprobs=[-1.0], finished=True)
    page = login_page(staff_user)
    page.goto(f"{live_server.url}/staff/p/{project.slug}/compare/?a=0&b=1")
    page.wait_for_selector("#compare")
    assert page.locator("#compare del.diff-del").all_inner_texts() == ["drags", "but", "last"]
    assert page.locator("#compare ins.diff-ins").all_inner_texts() == ["sags", "yet", "final"]
    screenshot(page, "compare")

    page.click("#arena-from-compare button")
    # The click starts a navigation; the keys script is deferred, so a key pressed before the new
    # page's load event can reach a document with no key handler yet (seen once in CI).
    page.wait_for_url(f"**/p/{project.slug}/arena/")  # waits for the load event
    card = page.locator("#card[data-vote]")
    card.wait_for()
    assert "version" not in card.inner_text().lower()  # blind: no names
    page.keyboard.press("x")
    page.locator(f"#card:not([data-vote='{card.get_attribute('data-vote')}'])").wait_for()

    vote = ArenaVote.objects.get(voted_at__isnull=False)
    assert vote.choice == "both_bad" and {vote.version_a_id, vote.version_b_id} == {v0.pk, v1.pk}
