"""The blind version arena: matchups, votes and undo, the Bradley–Terry fit, the leaderboard, and the
promotion rule "a newer version must beat the served one in the arena"."""

import math
import random
import re

import pytest

from webapp.arena import selectors as arena_selectors
from webapp.arena import services as arena_services
from webapp.arena.models import ArenaVote
from webapp.errors import ApplicationError
from webapp.policies import services as policy_services
from webapp.policies.models import AuditEvent, ModelVersion
from arena_helpers import add_version, sample_for


@pytest.fixture
def held_out(project):
    """Five held-out prompts (the project fixture has one), each completed by v0."""
    from webapp.annotation.models import Prompt

    for i in range(4):
        Prompt.objects.create(project=project, text=f"Held-out prompt {i}", held_out=True)
    v0 = project.served_version
    for prompt in project.prompts.filter(held_out=True):
        sample_for(v0, prompt, "answer of version 0")
    return list(project.prompts.filter(held_out=True).order_by("id"))


def cast(project, voter, winner=None, *, choice=None):
    """Draw the voter's matchup and vote for ``winner`` (a ModelVersion) or cast ``choice``."""
    match = arena_services.arena_match_next(project=project, voter=voter)
    assert match is not None
    if choice is None:
        choice = "a" if match.version_a_id == winner.pk else "b"
    return arena_services.arena_vote_cast(project=project, voter=voter, vote_id=match.pk, choice=choice)


# --- An empty arena ------------------------------------------------------------------------------


def test_an_arena_with_one_version_says_so_on_both_pages(project, held_out, staff_client):
    arena = staff_client.get(f"/p/{project.slug}/arena/")
    assert arena.status_code == 200
    card = staff_client.post(f"/p/{project.slug}/arena/next/", headers={"HX-Request": "true"}).content.decode()
    assert "The arena is empty" in card and "this project has one" in card
    board = staff_client.get(f"/staff/p/{project.slug}/arena/").content.decode()
    assert "The arena needs two model versions" in board and 'id="arena-table"' not in board
    assert not ArenaVote.objects.exists()


# --- Matchups are blind and keep the hidden mapping ----------------------------------------------


def test_a_matchup_shows_two_versions_answers_without_names_and_the_vote_keeps_which_was_which(
    project, held_out, staff_client, staff_user
):
    v1 = add_version(project, 1)
    card = staff_client.post(f"/p/{project.slug}/arena/next/", headers={"HX-Request": "true"}).content.decode()
    match = ArenaVote.objects.get(voter=staff_user, choice="")
    assert "answer of version 0" in card and "answer of version 1" in card
    visible = re.sub(r"<[^>]*>", " ", card)  # the text a voter reads (not the random CSRF token)
    visible = visible.replace("answer of version 0", "").replace("answer of version 1", "")
    assert "v1" not in visible and "v0" not in visible and "version" not in visible.lower()
    assert {match.version_a_id, match.version_b_id} == {project.served_version_id, v1.pk}
    assert match.sample_a.version_id == match.version_a_id and match.sample_b.version_id == match.version_b_id

    answer = staff_client.post(f"/p/{project.slug}/arena/{match.pk}/vote/", {"choice": "b"}, headers={"HX-Request": "true"})
    assert answer.status_code == 200
    match.refresh_from_db()
    assert match.choice == "b" and match.voted_at is not None and match.winner_id == match.version_b_id
    # The answer is the next matchup: the same pair, another prompt.
    following = ArenaVote.objects.get(voter=staff_user, choice="")
    assert following.prompt_id != match.prompt_id and f'data-vote="{following.pk}"' in answer.content.decode()


def test_sides_are_randomised_across_matchups(project, held_out, make_user):
    v1 = add_version(project, 1)
    left = set()
    for seed in range(12):
        voter = make_user(f"side{seed}", staff=True)
        match = arena_services.arena_match_next(project=project, voter=voter, rng=random.Random(seed))
        left.add(match.version_a_id)
    assert left == {project.served_version_id, v1.pk}


def test_a_voter_judges_each_prompt_of_a_pair_once_then_the_arena_says_nothing_is_left(
    project, held_out, staff_user, staff_client
):
    add_version(project, 1)
    for _ in held_out:
        cast(project, staff_user, choice="tie")
    assert arena_services.arena_match_next(project=project, voter=staff_user) is None
    card = staff_client.post(f"/p/{project.slug}/arena/next/", headers={"HX-Request": "true"}).content.decode()
    assert "Nothing left to judge" in card


def test_two_requests_for_a_matchup_hold_one(project, held_out, staff_user):
    add_version(project, 1)
    first = arena_services.arena_match_next(project=project, voter=staff_user)
    assert arena_services.arena_match_next(project=project, voter=staff_user).pk == first.pk
    assert ArenaVote.objects.filter(voter=staff_user, choice="").count() == 1


def test_a_double_click_stores_one_vote_and_a_bad_choice_or_someone_elses_matchup_is_refused(
    project, held_out, staff_user, make_user, staff_client
):
    add_version(project, 1)
    match = arena_services.arena_match_next(project=project, voter=staff_user)
    url = f"/p/{project.slug}/arena/{match.pk}/vote/"
    bad = staff_client.post(url, {"choice": "c"}, headers={"HX-Request": "true"})
    assert bad.status_code == 400 and "A vote is one of" in bad.content.decode()
    match.refresh_from_db()
    assert match.choice == ""
    other = make_user("other", staff=True)
    with pytest.raises(ApplicationError, match="not yours"):
        arena_services.arena_vote_cast(project=project, voter=other, vote_id=match.pk, choice="a")
    arena_services.arena_vote_cast(project=project, voter=staff_user, vote_id=match.pk, choice="a")
    arena_services.arena_vote_cast(project=project, voter=staff_user, vote_id=match.pk, choice="a")
    assert arena_selectors.counted_votes(project=project).count() == 1


def test_undo_keeps_the_vote_as_history_and_shows_the_same_matchup_again(project, held_out, staff_user, staff_client):
    add_version(project, 1)
    voted = cast(project, staff_user, choice="a")
    answer = staff_client.post(f"/p/{project.slug}/arena/undo/", headers={"HX-Request": "true"}).content.decode()
    assert "Undone: you had voted" in answer and "A (left) is better" in answer
    voted.refresh_from_db()
    assert voted.undone_at is not None and voted.choice == "a"  # kept, not fitted
    again = ArenaVote.objects.get(voter=staff_user, choice="")
    assert (again.prompt_id, again.version_a_id, again.version_b_id) == (voted.prompt_id, voted.version_a_id, voted.version_b_id)
    assert arena_selectors.counted_votes(project=project).count() == 0
    nothing = staff_client.post(f"/p/{project.slug}/arena/undo/", headers={"HX-Request": "true"})
    assert nothing.status_code == 400 and "Nothing to undo" in nothing.content.decode()


def test_annotators_vote_only_when_the_project_opens_the_arena_to_them(project, held_out, annotator, client):
    add_version(project, 1)
    client.force_login(annotator)
    assert client.get(f"/p/{project.slug}/arena/").status_code == 403
    assert client.get(f"/staff/p/{project.slug}/arena/").status_code == 403
    project.arena_voters = "members"
    project.save(update_fields=["arena_voters"])
    assert client.get(f"/p/{project.slug}/arena/").status_code == 200
    assert client.post(f"/p/{project.slug}/arena/next/").status_code == 200
    assert client.get(f"/staff/p/{project.slug}/arena/").status_code == 403  # the leaderboard stays staff's


# --- The fit -------------------------------------------------------------------------------------


def test_bradley_terry_fit_agrees_with_a_plain_maximum_likelihood_fit_on_many_votes():
    """The MAP fit with a weak prior against a plain BFGS maximum-likelihood fit, one vote at a time."""
    import numpy as np
    from scipy.optimize import minimize

    rng = random.Random(0)
    true = {10: 0.0, 11: 0.8, 12: -0.5}
    comparisons = []
    for _ in range(3000):
        i, j = rng.sample(list(true), 2)
        p = 1 / (1 + math.exp(true[j] - true[i]))
        comparisons.append((i, j, 1.0) if rng.random() < p else (j, i, 1.0))
    mean, cov = arena_selectors.bradley_terry_fit(comparisons=comparisons, items=[10, 11, 12])

    index = {10: 0, 11: 1, 12: 2}
    w = np.array([index[a] for a, _, _ in comparisons])
    lo = np.array([index[b] for _, b, _ in comparisons])

    def nll(s):
        return float(np.sum(np.log1p(np.exp(s[lo] - s[w]))))

    mle = minimize(nll, np.zeros(3), method="BFGS").x
    for a, b in [(11, 10), (10, 12), (11, 12)]:
        assert mean[a] - mean[b] == pytest.approx(mle[index[a]] - mle[index[b]], abs=0.02)
        assert mean[a] - mean[b] == pytest.approx(true[a] - true[b], abs=0.15)
    assert all(cov[(k, k)] < 0.1 for k in true)  # 2,000 votes per version: a narrow interval


def test_the_leaderboard_ranks_the_winner_first_with_intervals_and_counts(project, held_out, make_user, staff_client):
    v1 = add_version(project, 1)
    v2 = add_version(project, 2)
    voters = [make_user(f"voter{i}", staff=True) for i in range(4)]
    for voter in voters:
        for _ in range(len(held_out) * 2):  # every matchup of both pairs with v2... and v0/v1
            match = arena_services.arena_match_next(project=project, voter=voter)
            if match is None:
                break
            ids = {match.version_a_id, match.version_b_id}
            winner = v2 if v2.pk in ids else v1
            choice = "tie" if winner.pk not in ids else ("a" if match.version_a_id == winner.pk else "b")
            arena_services.arena_vote_cast(project=project, voter=voter, vote_id=match.pk, choice=choice)
    board = arena_selectors.arena_leaderboard(project=project)
    assert [r.version.number for r in board.rows] == [2, 1, 0]
    assert all(r.low < r.score < r.high for r in board.rows)
    top = board.rows[0]
    assert top.losses == 0 and top.wins == top.votes > 0
    assert board.n_votes == sum(r.votes for r in board.rows) // 2
    page = staff_client.get(f"/staff/p/{project.slug}/arena/").content.decode()
    assert page.index('data-version="2"') < page.index('data-version="1"') < page.index('data-version="0"')
    assert "arena/plot.png?v=" in page


def test_the_leaderboard_plot_is_drawn_once_per_set_of_votes(project, held_out, staff_user, staff_client, settings, tmp_path):
    from webapp.policies import plotfiles

    settings.DATA_DIR = tmp_path
    add_version(project, 1)
    cast(project, staff_user, choice="a")
    spec = arena_selectors.arena_leaderboard_plot_spec(board=arena_selectors.arena_leaderboard(project=project))
    key = plotfiles.plot_draw(kind=spec[0], data=spec[1], slot="x")
    response = staff_client.get(f"/staff/p/{project.slug}/arena/plot.png?v={key}")
    assert response["Content-Type"] == "image/png" and response["X-Plot"] == "ready"
    assert response.content[:8] == b"\x89PNG\r\n\x1a\n"
    cast(project, staff_user, choice="b")  # a new vote: a new key
    again = arena_selectors.arena_leaderboard_plot_spec(board=arena_selectors.arena_leaderboard(project=project))
    assert plotfiles.plot_key(*again) != key


def test_direct_votes_count_each_versions_counted_votes_against_one_on_either_side(project, held_out, make_user):
    from django.utils import timezone

    v0, v1, v2 = project.served_version, add_version(project, 1), add_version(project, 2)
    voter, prompt, now = make_user("judge", staff=True), held_out[0], timezone.now()

    def vote(a, b, choice, *, undone=False):
        ArenaVote.objects.create(
            project=project, voter=voter, prompt=prompt, version_a=a, version_b=b, sample_a=a.samples.get(prompt=prompt),
            sample_b=b.samples.get(prompt=prompt), choice=choice, voted_at=now if choice else None,
            undone_at=now if undone else None,
        )

    vote(v0, v1, "a")
    vote(v1, v0, "tie")  # v0 shown on the right counts the same
    vote(v2, v0, "both_bad")
    vote(v1, v2, "a")  # not v0's
    vote(v0, v1, "b", undone=True)  # undone: not counted
    vote(v0, v2, "")  # pending: not counted
    assert arena_selectors.direct_votes(project=project, version_id=v0.pk) == {v1.pk: 2, v2.pk: 1}
    assert arena_selectors.direct_votes(project=project, version_id=v0.pk, others=[v1.pk]) == {v1.pk: 2}
    assert arena_selectors.direct_votes(project=project, version_id=v1.pk) == {v0.pk: 2, v2.pk: 1}


# --- Promotion requires the arena where the project says so -----------------------------------------


@pytest.fixture
def arena_required(project):
    project.arena_required = True
    project.arena_min_votes = 4
    project.save(update_fields=["arena_required", "arena_min_votes"])
    return project


def test_a_candidate_that_has_not_beaten_the_served_version_is_not_served(arena_required, held_out, make_user, staff_user):
    project = arena_required
    v0 = project.served_version
    v1 = add_version(project, 1)
    with pytest.raises(ApplicationError, match="0 of the 4 votes"):
        policy_services.version_promote(version=v1, user=staff_user)
    for i in range(4):
        cast(project, make_user(f"l{i}", staff=True), v0)  # v1 loses every vote
    with pytest.raises(ApplicationError, match="has not beaten v0 in the arena"):
        policy_services.version_promote(version=v1, user=staff_user)
    project.refresh_from_db()
    assert project.served_version == v0
    # Serve anyway overrides it, audited; rolling back to v0 never waits for the arena.
    policy_services.version_promote(version=v1, user=staff_user, override_guard=True)
    event = AuditEvent.objects.filter(action="promote").latest("id")
    assert "has not beaten v0" in event.detail["override_arena"]
    policy_services.version_promote(version=v0, user=staff_user)
    project.refresh_from_db()
    assert project.served_version == v0


def test_a_candidate_that_beats_the_served_version_is_served(arena_required, held_out, make_user, staff_user, staff_client):
    project = arena_required
    v1 = add_version(project, 1)
    for i in range(4):
        voter = make_user(f"w{i}", staff=True)
        cast(project, voter, v1)
        cast(project, voter, v1)
    verdict = arena_selectors.arena_verdict(candidate=v1, served=project.served_version)
    assert verdict.beats and verdict.head_to_head == 8 and verdict.probability >= 0.9
    page = staff_client.get(f"/staff/p/{project.slug}/arena/").content.decode()
    assert 'data-candidate="1" data-beats="1"' in page
    policy_services.version_promote(version=v1, user=staff_user)
    project.refresh_from_db()
    assert project.served_version == v1


def test_without_the_setting_the_arena_does_not_hold_promotion_up(project, held_out, staff_user):
    v1 = add_version(project, 1)
    policy_services.version_promote(version=v1, user=staff_user)
    project.refresh_from_db()
    assert project.served_version == v1


def test_a_runs_new_version_waits_for_the_arena_then_staff_serve_it_once_it_wins(arena_required, make_user, staff_user):
    from webapp.annotation import services as annotation_services
    from webapp.annotation.models import Completion, Rating
    from webapp.training import services as training_services

    project = arena_required
    project.arena_min_votes = 2
    project.save(update_fields=["arena_min_votes"])
    annotation_services.completion_pool_refill(project=project, seed=1)
    rater = make_user("rater")
    for completion in Completion.objects.filter(project=project, ratings__isnull=True):
        Rating.objects.create(completion=completion, annotator=rater, score=5 if completion.pk % 2 else 2)
    run = training_services.training_run_execute(
        run_id=training_services.training_run_create(project=project, trigger="manual").pk
    )
    assert run.status == "succeeded" and not run.promoted, run.log
    assert "0 of the 2 votes" in run.held_back_reason and "wins the arena" in run.log
    v1 = ModelVersion.objects.get(pk=run.result_version_id)
    assert v1.held_back_reason == ""  # waiting, not held back by the guard
    project.refresh_from_db()
    assert project.served_version.number == 0
    for i in range(2):  # one held-out prompt: each voter judges it once
        cast(project, make_user(f"judge{i}", staff=True), v1)
    verdict = arena_selectors.arena_verdict(candidate=v1, served=project.served_version)
    if not verdict.beats:  # two votes may leave the posterior short of 90%: more voters
        for i in range(2, 8):
            cast(project, make_user(f"judge{i}", staff=True), v1)
    policy_services.version_promote(version=v1, user=staff_user)
    project.refresh_from_db()
    assert project.served_version == v1
