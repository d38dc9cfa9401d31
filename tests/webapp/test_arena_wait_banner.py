"""The "waiting for the arena" banner: where a project requires the arena, a newer version that passed
the guard waits unserved until it beats the served one; the run and versions pages say so, with the
direct votes so far and the votes needed. Polled on every page load, it refits the arena's
Bradley–Terry model only after a vote is cast or undone (the fit is cached by the votes' state)."""

import re

import pytest
from arena_helpers import add_version, sample_for

from webapp.arena import selectors
from webapp.arena import services as arena_services
from webapp.policies import selectors as policy_selectors
from webapp.policies.models import ModelVersion
from webapp.training.models import TrainingRun


@pytest.fixture
def arena_project(project):
    from webapp.annotation.models import Prompt

    project.arena_required = True
    project.arena_min_votes = 4
    project.save(update_fields=["arena_required", "arena_min_votes"])
    for i in range(7):
        Prompt.objects.create(project=project, text=f"Held-out prompt {i}", held_out=True)
    for prompt in project.prompts.filter(held_out=True):
        sample_for(project.served_version, prompt, "answer of version 0")
    return project


def _vote(project, voter, winner):
    match = arena_services.arena_match_next(project=project, voter=voter)
    arena_services.arena_vote_cast(project=project, voter=voter, vote_id=match.pk, choice="a" if match.version_a_id == winner.pk else "b")


def _banner(html: str, number: int) -> str:
    found = re.search(rf'<div class="flash [a-z]+ promotion-wait"[^>]*id="arena-wait-{number}".*?</div>', html, re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", found.group(0))).strip() if found else ""


def test_the_versions_page_counts_the_votes_a_waiting_version_has_and_needs(arena_project, make_user, staff_client):
    project = arena_project
    v0, v1 = project.served_version, add_version(project, 1)
    url = f"/staff/p/{project.slug}/versions/"
    assert "v1 is waiting for the arena: 0 of 4 votes against v0 so far (4 more needed)" in _banner(staff_client.get(url).content.decode(), 1)
    voter = make_user("judge", staff=True)
    _vote(project, voter, v0)
    _vote(project, voter, v1)
    assert "2 of 4 votes against v0 so far (2 more needed)" in _banner(staff_client.get(url).content.decode(), 1)
    for _ in range(2):  # enough votes, but v1 has not beaten v0
        _vote(project, voter, v0)
    banner = _banner(staff_client.get(url).content.decode(), 1)
    assert "4 of 4 votes against v0, but it has not beaten it yet" in banner and "has not beaten v0 in the arena" in banner
    for i in range(3):
        other = make_user(f"fan{i}", staff=True)
        for _ in range(7):
            _vote(project, other, v1)
    banner = _banner(staff_client.get(url).content.decode(), 1)
    assert banner.startswith("v1 won the arena against v0 (25 votes, 4 needed)") and "staff may serve it" in banner


def test_no_banner_without_the_setting_for_a_held_back_version_or_an_older_one(arena_project, staff_client, staff_user):
    project = arena_project
    v1 = add_version(project, 1)
    held = add_version(project, 2)
    ModelVersion.objects.filter(pk=held.pk).update(held_back_reason="KL to base 9.1 > 5")
    assert [w.version for w in policy_selectors.promotion_waits(project=project)] == [1]
    project.served_version = v1  # an older version than the served one waits for nothing (a roll-back)
    project.save(update_fields=["served_version"])
    assert policy_selectors.promotion_waits(project=project) == []
    project.arena_required = False
    project.served_version = ModelVersion.objects.get(project=project, number=0)
    project.save(update_fields=["arena_required", "served_version"])
    assert policy_selectors.promotion_waits(project=project) == []
    assert "promotion-wait" not in staff_client.get(f"/staff/p/{project.slug}/versions/").content.decode()


def test_the_run_page_shows_the_live_vote_count_instead_of_the_reason_it_ended_with(arena_project, make_user, staff_client):
    project = arena_project
    v0, v1 = project.served_version, add_version(project, 1)
    reason = "the arena has 0 of the 4 votes it needs on v1 against v0."
    run = TrainingRun.objects.create(
        project=project, trigger="manual", parent_version=v0, result_version=v1, status="running", held_back_reason=reason
    )
    url = f"/staff/p/{project.slug}/runs/{run.pk}/"
    assert "promotion-wait" not in staff_client.get(url).content.decode()  # still evaluating: nothing to wait for yet
    TrainingRun.objects.filter(pk=run.pk).update(status="succeeded")
    voter = make_user("judge", staff=True)
    _vote(project, voter, v1)
    page = staff_client.get(url).content.decode()
    assert "v1 is waiting for the arena: 1 of 4 votes against v0 so far (3 more needed)" in _banner(page, 1)
    assert 'id="held-back"' not in page
    assert "1 of 4 votes" in _banner(staff_client.get(f"/staff/p/{project.slug}/runs/{run.pk}/status/", headers={"HX-Request": "true"}).content.decode(), 1)


def test_once_the_held_back_version_is_served_the_run_page_says_so_instead_of_the_stale_alert(project, staff_client, staff_user):
    from django.utils import timezone

    from webapp.policies import services as policy_services

    v0, v1 = project.served_version, add_version(project, 1)
    ModelVersion.objects.filter(pk=v1.pk).update(held_back_reason="KL to the base 0.9 is over the limit 0.5.")
    run = TrainingRun.objects.create(
        project=project, trigger="manual", parent_version=v0, result_version=v1, status="succeeded",
        held_back_reason="KL to the base 0.9 is over the limit 0.5.", finished_at=timezone.now(),
    )
    url = f"/staff/p/{project.slug}/runs/{run.pk}/"
    page = staff_client.get(url).content.decode()
    assert 'class="flash error" role="alert" id="held-back"' in page and "v1 was kept but not served:" in page
    runs_list = f"/staff/p/{project.slug}/runs/"
    listed = re.sub(r"\s+", " ", staff_client.get(runs_list).content.decode())
    assert "not served: KL to the base 0.9" in listed and "served later" not in listed

    v1.refresh_from_db()
    policy_services.version_promote(version=v1, user=staff_user, override_guard=True, reason="checked the outputs by hand")
    page = re.sub(r"\s+", " ", staff_client.get(url).content.decode())
    assert 'role="alert" id="held-back"' not in page
    note = re.search(r'<p class="flash info" role="status" id="held-back">(.*?)</p>', page).group(1)
    assert "v1 was kept but not served when this run ended (KL to the base 0.9 is over the limit 0.5); it was" in note
    assert "it was served" in note and f"by {staff_user}" in note
    listed = re.sub(r"\s+", " ", staff_client.get(runs_list).content.decode())  # the list agrees with the run page
    assert "not served:" not in listed
    assert "held back when the run ended (KL to the base 0.9 is over the limit 0.5); served later" in listed
    assert ".)" not in note and ".)" not in listed


@pytest.fixture
def fits(monkeypatch):
    """Counts the real fits run."""
    calls = []
    real = selectors.bradley_terry_fit

    def counted(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(selectors, "bradley_terry_fit", counted)
    return calls


def _wait(project):
    project.refresh_from_db()
    (wait,) = policy_selectors.promotion_waits(project=project)
    return wait


def test_polling_the_banner_fits_once_until_a_vote_is_cast_or_undone(arena_project, make_user, fits):
    project = arena_project
    v0, v1 = project.served_version, add_version(project, 1)
    voter = make_user("judge", staff=True)
    for _ in range(4):
        _vote(project, voter, v1)
    first = _wait(project)
    assert first.won and len(fits) == 1
    for _ in range(5):
        assert _wait(project) == first
    assert len(fits) == 1, "a poll with no new vote reads the cached fit"

    _vote(project, make_user("other", staff=True), v0)
    after_vote = _wait(project)
    assert len(fits) == 2 and after_vote.votes == 5
    assert after_vote.reason != first.reason  # the new vote moved the posterior

    arena_services.arena_vote_undo(project=project, voter=voter)
    after_undo = _wait(project)
    assert len(fits) == 3 and after_undo.votes == 4


def test_the_cached_verdict_equals_the_leaderboards(arena_project, make_user):
    project = arena_project
    v0, v1 = project.served_version, add_version(project, 1)
    for i, winner in enumerate([v1, v1, v0, v1]):
        _vote(project, make_user(f"judge{i}", staff=True), winner)
    add_version(project, 2)  # a version without votes: in the leaderboard's fit, not in the banner's
    board = selectors.arena_leaderboard(project=project)
    from_board = selectors.arena_verdict(candidate=v1, served=v0, board=board)
    cached = selectors.arena_verdict(candidate=v1, served=v0)
    assert cached.head_to_head == from_board.head_to_head == 4
    assert cached.probability is not None
    assert cached.probability == pytest.approx(from_board.probability, abs=1e-6)


def test_the_arena_draws_the_matchup_a_promotion_waits_for_until_it_has_its_votes_and_keeps_the_others_on_offer(
    arena_project, make_user
):
    """Five versions, v3 served, v4 waiting for the arena (4 direct votes needed): the first four
    matchups are v4 against v3, not the least voted of the ten pairs; after that, while v4 has
    not won, the other pairs are drawn too, and v4 against v3 still comes up."""
    import random

    project = arena_project
    versions = [project.served_version] + [add_version(project, n) for n in range(1, 5)]
    project.served_version = versions[3]
    project.save(update_fields=["served_version"])
    waiting = {versions[3].pk, versions[4].pk}

    for n in range(4):
        voter = make_user(f"early{n}", staff=True)
        match = arena_services.arena_match_next(project=project, voter=voter, rng=random.Random(n))
        assert {match.version_a_id, match.version_b_id} == waiting, f"draw {n + 1}"
        arena_services.arena_vote_cast(project=project, voter=voter, vote_id=match.pk, choice="tie")
    [wait] = policy_selectors.promotion_waits(project=project)
    assert (wait.version, wait.served, wait.votes, wait.won) == (4, 3, 4, False)

    drawn = []
    for n in range(16):
        voter = make_user(f"later{n}", staff=True)
        match = arena_services.arena_match_next(project=project, voter=voter, rng=random.Random(100 + n))
        drawn.append(frozenset((match.version_a_id, match.version_b_id)))
        arena_services.arena_vote_cast(project=project, voter=voter, vote_id=match.pk, choice="tie")
    assert frozenset(waiting) in drawn and len(set(drawn)) >= 5
