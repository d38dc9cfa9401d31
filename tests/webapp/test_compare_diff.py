"""The compare page: a word-level diff of two versions' answers, and a blind arena vote from there."""

import pytest

from webapp.arena.models import ArenaVote
from webapp.training.textdiff import word_diff

from arena_helpers import add_version, sample_for


@pytest.mark.parametrize(
    "left,right",
    [
        ("The film is slow and dull.", "The film is quick and bright."),
        ("", "all new"),
        ("same  text\nkept", "same  text\nkept"),
        ("  leading and trailing  ", "leading, and trailing"),
    ],
)
def test_each_side_of_a_word_diff_gives_back_its_text_exactly(left, right):
    diff_a, diff_b, _ = word_diff(left, right)
    assert "".join(s.text for s in diff_a) == left
    assert "".join(s.text for s in diff_b) == right


def test_a_word_diff_marks_only_the_words_that_differ():
    diff_a, diff_b, similarity = word_diff("The film is slow and dull.", "The film is quick and dull.")
    assert [s.text for s in diff_a if s.changed] == ["slow"]
    assert [s.text for s in diff_b if s.changed] == ["quick"]
    assert similarity == pytest.approx(2 * 5 / 12)
    assert word_diff("", "")[2] == 1.0
    assert not any(s.changed for s in word_diff("a b", "a b")[0])


def test_the_compare_page_shows_the_diff_escaped_and_offers_a_blind_arena_vote(project, staff_client):
    prompt = project.prompts.get(held_out=True)
    sample_for(project.served_version, prompt, "A <b>slow</b> film.")
    add_version(project, 1, text="A <b>fast</b> film.")
    page = staff_client.get(f"/staff/p/{project.slug}/compare/?a=0&b=1").content.decode()
    assert '<del class="diff-del">&lt;b&gt;slow&lt;/b&gt;</del>' in page
    assert '<ins class="diff-ins">&lt;b&gt;fast&lt;/b&gt;</ins>' in page
    assert "% of words in common" in page
    assert 'id="arena-from-compare"' in page and f'action="/p/{project.slug}/arena/next/"' in page


def test_voting_from_the_compare_page_draws_that_pair_replacing_another_pending_matchup(project, staff_client, staff_user):
    prompt = project.prompts.get(held_out=True)
    sample_for(project.served_version, prompt, "v0's answer")
    v1 = add_version(project, 1)
    v2 = add_version(project, 2)
    other = ArenaVote.objects.create(
        project=project, voter=staff_user, prompt=prompt, version_a=v1, version_b=v2,
        sample_a=v1.samples.get(), sample_b=v2.samples.get(),
    )
    answer = staff_client.post(f"/p/{project.slug}/arena/next/", {"a": "2", "b": "0"})
    assert answer.status_code == 302 and answer["Location"] == f"/p/{project.slug}/arena/"
    pending = ArenaVote.objects.get(voter=staff_user, choice="")
    assert {pending.version_a_id, pending.version_b_id} == {v2.pk, project.served_version_id}
    assert not ArenaVote.objects.filter(pk=other.pk).exists()
    # Judged already: the arena says so and offers other matchups.
    ArenaVote.objects.filter(pk=pending.pk).update(choice="a", voted_at=pending.shown_at)
    again = staff_client.post(f"/p/{project.slug}/arena/next/", {"a": "2", "b": "0"}, follow=True).content.decode()
    assert "You have voted on every held-out prompt of v2 against v0" in again
    bad = staff_client.post(f"/p/{project.slug}/arena/next/", {"a": "2", "b": "2"}, follow=True).content.decode()
    assert "Choose two different versions" in bad
