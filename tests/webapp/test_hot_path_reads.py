"""The written-out reads of every annotator request return what the ORM reads did.

Each request of a signed-in annotator reads the project with their role
(``policies.selectors.project_access``), the card's lease (``annotation.selectors.lease_held``)
and the progress line (``annotation.selectors.annotator_progress``) by statements written out
for CPU (``bench/annotate_load.py``); these tests compare them with the plain reads.
"""

from tests.webapp.annotation_helpers import make_pair, make_project
from webapp.annotation import selectors, services
from webapp.policies.models import Membership, Project, RatingMode
from webapp.policies.selectors import project_access


def fields_of(instance) -> dict:
    return {f.attname: getattr(instance, f.attname) for f in type(instance)._meta.concrete_fields}


# --- The project and the role ----------------------------------------------------------


def test_project_access_reads_the_same_project_as_the_orm(project, annotator, staff_user, make_user):
    Project.objects.filter(pk=project.pk).update(
        rubric=[{"name": "clarity", "weight": 0.5, "description": "é"}], gold_rate=0.25, active_queue=True
    )
    expected = fields_of(Project.objects.get(pk=project.pk))
    read, role = project_access(project_slug=project.slug, user=annotator)
    assert fields_of(read) == expected and role == Membership.Role.ANNOTATOR
    assert read.rubric[0]["description"] == "é" and not read._state.adding
    read, role = project_access(project_slug=project.slug, user=staff_user)
    assert fields_of(read) == expected and role == Membership.Role.STAFF
    outsider = make_user("outsider", member=False)
    assert project_access(project_slug=project.slug, user=outsider) == (None, None)
    assert project_access(project_slug="no-such-project", user=annotator) == (None, None)


# --- The progress line while a card is held ---------------------------------------------


def test_the_progress_line_while_a_card_is_held(project, annotator, make_user, make_completion):
    items = [make_completion(project) for _ in range(6)]
    other = make_user("other")
    services.rating_create(annotator=annotator, completion=items[0], score=4)
    services.rating_create(annotator=other, completion=items[1], score=2)
    services.item_skip(annotator=annotator, completion=items[2])
    lease = services.lease_next(project=project, annotator=annotator)
    # six items: one rated by them, one skipped, one with all its ratings (one per item) by another,
    # one on their screen (the lease: not counted, the card says "after this one"), two waiting
    assert selectors.annotator_progress(project=project, annotator=annotator) == {
        "today": 1, "queue": 2, "queue_capped": False, "can_undo": True
    }
    held = selectors.lease_held(project=project, annotator=annotator)
    assert held.pk == lease.pk and held.completion.prompt.text and held.completion.model_version.number == 0


def test_the_progress_line_while_a_pairwise_card_is_held(tiny_model_dir, annotator, make_completion):
    project = make_project(tiny_model_dir, slug="pw", mode=RatingMode.PAIRWISE)
    Membership.objects.get_or_create(project=project, user=annotator)
    pairs = [make_pair(project, make_completion) for _ in range(3)]
    services.comparison_create(pair=pairs[0], annotator=annotator, choice="a")
    lease = services.lease_next(project=project, annotator=annotator)
    assert lease.completion.pair_as_a.pk in {pairs[1].pk, pairs[2].pk}
    progress = selectors.annotator_progress(project=project, annotator=annotator)
    assert progress["today"] == 1 and progress["queue"] == 1  # the other pair (the leased one is on screen)
