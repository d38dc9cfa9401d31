"""The arena's Bradley–Terry fit is cached by the votes' state: the "waiting for the arena" banner,
polled on every page load, refits only after a vote is cast or undone."""

import pytest
from arena_helpers import add_version, sample_for

from webapp.arena import selectors
from webapp.arena import services as arena_services
from webapp.policies import selectors as policy_selectors


@pytest.fixture
def arena_project(project):
    from webapp.annotation.models import Prompt

    project.arena_required = True
    project.arena_min_votes = 2
    project.save(update_fields=["arena_required", "arena_min_votes"])
    for i in range(6):
        Prompt.objects.create(project=project, text=f"Held-out prompt {i}", held_out=True)
    for prompt in project.prompts.filter(held_out=True):
        sample_for(project.served_version, prompt, "answer of version 0")
    return project


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


def _vote(project, voter, winner):
    match = arena_services.arena_match_next(project=project, voter=voter)
    choice = "a" if match.version_a_id == winner.pk else "b"
    return arena_services.arena_vote_cast(project=project, voter=voter, vote_id=match.pk, choice=choice)


def _wait(project):
    project.refresh_from_db()
    (wait,) = policy_selectors.promotion_waits(project=project)
    return wait


def test_polling_the_banner_fits_once_until_a_vote_is_cast_or_undone(arena_project, make_user, fits):
    project = arena_project
    v0, v1 = project.served_version, add_version(project, 1)
    voter = make_user("judge", staff=True)
    for _ in range(3):
        _vote(project, voter, v1)
    first = _wait(project)
    assert first.won and len(fits) == 1
    for _ in range(5):
        assert _wait(project) == first
    assert len(fits) == 1, "a poll with no new vote reads the cached fit"

    _vote(project, make_user("other", staff=True), v0)
    after_vote = _wait(project)
    assert len(fits) == 2 and after_vote.votes == 4
    assert after_vote.reason != first.reason  # the new vote moved the posterior

    arena_services.arena_vote_undo(project=project, voter=voter)
    after_undo = _wait(project)
    assert len(fits) == 3 and after_undo.votes == 3


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
