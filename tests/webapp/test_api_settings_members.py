"""A project's settings and members through the REST API, as the setup page and the runs page's
training settings edit them: the same forms validate, the same services save and audit."""

import pytest

from tests.webapp.api_helpers import api_for  # noqa: F401 - fixture
from webapp.policies.models import AuditEvent, Membership, Project


@pytest.fixture
def lead(make_user, project):
    """A staff member of the project who is not global staff (the token's role comes from the membership)."""
    user = make_user("lead", member=False)
    Membership.objects.create(project=project, user=user, role=Membership.Role.STAFF)
    return user


def test_staff_read_and_change_settings_of_both_pages_and_each_form_is_audited(project, lead, api_for):
    api = api_for(lead)
    before = api.get("/projects/t/settings")
    assert before.status_code == 200, before.content
    read = before.json()
    assert read["title"] == project.title and read["rating_mode"] == project.rating_mode
    assert read["min_new_ratings"] == project.min_new_ratings and read["arena_required"] == project.arena_required

    changed = api.patch("/projects/t/settings", {"title": "Renamed", "guidelines": "Be brief.\r\nBe kind.",
                                                  "guard_max_kl": 0.75, "arena_required": True})
    assert changed.status_code == 200, changed.content
    body = changed.json()
    assert (body["title"], body["guard_max_kl"], body["arena_required"]) == ("Renamed", 0.75, True)
    assert body["guidelines"] == "Be brief.\nBe kind."  # stored as the page's form stores it (LF)
    assert body["pool_target"] == read["pool_target"]  # left out: kept
    project.refresh_from_db()
    assert (project.title, project.guard_max_kl, project.arena_required) == ("Renamed", 0.75, True)
    events = AuditEvent.objects.filter(project=project, action=AuditEvent.Action.SETTINGS).order_by("id")
    assert [(e.target, e.actor, sorted(e.detail)) for e in events] == [
        ("project setup", lead, ["guidelines", "title"]),
        ("training settings", lead, ["arena_required", "guard_max_kl"]),
    ]
    assert api.patch("/projects/t/settings", {"title": "Renamed"}).status_code == 200
    assert events.count() == 2  # nothing changed, nothing audited


@pytest.mark.parametrize("change, field", [
    ({"ratings_per_item": 0}, "ratings_per_item"),
    ({"pool_target": 1001}, "pool_target"),
    ({"rating_mode": "rubric"}, "rating_mode"),  # the form's rule: rubric mode needs a rubric
    ({"rating_mode": "stars"}, "rating_mode"),
    ({"title": ""}, "title"),
    ({"title": None}, "title"),
    ({"guard_min_distinct2_ratio": 1.5}, "guard_min_distinct2_ratio"),
    ({"arena_voters": "everyone"}, "arena_voters"),
    ({"arena_required": "yes"}, "arena_required"),
    ({"min_new_ratings": True}, "min_new_ratings"),
    ({"min_new_ratings": 1e9}, "min_new_ratings"),  # no upper bound once meant "never train", silently
    ({"min_new_ratings": 100_001}, "min_new_ratings"),
    ({"guard_max_kl": 1e9}, "guard_max_kl"),
    ({"colour": "red"}, "colour"),
    ({"title": "Fine", "guard_eval_prompts": 0}, "guard_eval_prompts"),  # one bad field: nothing saved
])
def test_a_setting_a_form_refuses_is_a_400_naming_it_and_nothing_is_saved(project, lead, api_for, change, field):
    before = Project.objects.filter(pk=project.pk).values().get()
    response = api_for(lead).patch("/projects/t/settings", change)
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid"
    assert [f["field"] for f in response.json()["fields"]] == [field]
    assert Project.objects.filter(pk=project.pk).values().get() == before
    assert not AuditEvent.objects.filter(action=AuditEvent.Action.SETTINGS).exists()


def test_members_are_listed_added_by_username_given_a_role_and_removed(project, lead, annotator, make_user, api_for):
    api = api_for(lead)
    newcomer = make_user("newcomer", member=False)
    assert api.get("/projects/t/members").json() == [
        {"username": "ann", "role": "annotator"}, {"username": "lead", "role": "staff"}
    ]
    added = api.post("/projects/t/members", {"username": "newcomer"})
    assert added.status_code == 201 and added.json() == {"username": "newcomer", "role": "annotator"}
    again = api.post("/projects/t/members", {"username": "newcomer", "role": "staff"})  # as the page: role set
    assert again.status_code == 200 and again.json()["role"] == "staff"
    changed = api.patch("/projects/t/members/newcomer", {"role": "annotator"})
    assert changed.status_code == 200 and changed.json() == {"username": "newcomer", "role": "annotator"}
    assert Membership.objects.get(project=project, user=newcomer).role == "annotator"
    assert api.delete("/projects/t/members/newcomer").status_code == 204
    assert not Membership.objects.filter(project=project, user=newcomer).exists()
    events = AuditEvent.objects.filter(project=project, target="newcomer").order_by("id")
    assert [(e.action, e.actor, e.detail.get("role")) for e in events] == [
        ("member_add", lead, "annotator"), ("member_add", lead, "staff"), ("member_add", lead, "annotator"),
        ("member_remove", lead, None),
    ]


def test_unknown_users_and_non_members_are_404_a_bad_role_400_and_the_last_staff_member_cannot_leave(
    project, lead, make_user, api_for
):
    api = api_for(lead)
    make_user("outsider", member=False)
    ghost = api.post("/projects/t/members", {"username": "ghost"})
    assert ghost.status_code == 404 and ghost.json()["message"].startswith("No user is called 'ghost'")
    for response in (api.patch("/projects/t/members/outsider", {"role": "staff"}),
                     api.delete("/projects/t/members/outsider"), api.delete("/projects/t/members/ghost")):
        assert response.status_code == 404, response.content
    bad = api.post("/projects/t/members", {"username": "outsider", "role": "owner"})
    assert bad.status_code == 400 and [f["field"] for f in bad.json()["fields"]] == ["role"]
    themselves = api.delete("/projects/t/members/lead")  # the project's last staff member
    assert themselves.status_code == 409 and "lead is the last staff member of t" in themselves.json()["message"]
    assert Membership.objects.get(project=project, user=lead).role == "staff"
    assert not AuditEvent.objects.filter(project=project, action__in=["member_add", "member_remove"]).exists()


@pytest.mark.parametrize("method, path, body", [
    ("get", "/projects/t/settings", None),
    ("patch", "/projects/t/settings", {"title": "Mine"}),
    ("get", "/projects/t/members", None),
    ("post", "/projects/t/members", {"username": "ann", "role": "staff"}),
    ("patch", "/projects/t/members/ann", {"role": "staff"}),
    ("delete", "/projects/t/members/lead", None),
])
def test_annotators_get_403_and_strangers_404(project, lead, annotator, make_user, api_for, method, path, body):
    for user, status in ((annotator, 403), (make_user("stranger", member=False), 404)):
        api = api_for(user)
        response = getattr(api, method)(path, body) if body is not None else getattr(api, method)(path)
        assert response.status_code == status, (user, response.content)
    assert Membership.objects.get(project=project, user=annotator).role == "annotator"
    assert Membership.objects.filter(project=project, user=lead).exists()
    assert Project.objects.get(pk=project.pk).title != "Mine"


def test_the_last_staff_member_can_neither_demote_nor_be_removed_and_the_refusal_is_a_409(
    project, lead, make_user, api_for
):
    api = api_for(lead)
    demoted = api.patch("/projects/t/members/lead", {"role": "annotator"})
    assert demoted.status_code == 409, demoted.content
    assert demoted.json()["code"] == "rejected" and "last staff member" in demoted.json()["message"]
    again = api.post("/projects/t/members", {"username": "lead", "role": "annotator"})  # the form's way of saying it
    assert again.status_code == 409 and "last staff member" in again.json()["message"]
    boss = api_for(make_user("boss", staff=True, member=False))  # global staff: may manage it, is no member of it
    assert boss.delete("/projects/t/members/lead").status_code == 409
    assert boss.patch("/projects/t/members/lead", {"role": "annotator"}).status_code == 409
    assert Membership.objects.get(project=project, user=lead).role == "staff"
    assert not AuditEvent.objects.filter(project=project, action__in=["member_add", "member_remove"]).exists()

    second = make_user("second", member=False)
    assert api.post("/projects/t/members", {"username": "second", "role": "staff"}).status_code == 201
    assert api.patch("/projects/t/members/lead", {"role": "annotator"}).status_code == 200  # another staff member stays
    assert boss.delete("/projects/t/members/second").status_code == 409  # now the last one
    assert list(Membership.objects.filter(project=project, role="staff").values_list("user", flat=True)) == [second.pk]


def test_an_inactive_staff_member_does_not_count_as_the_staff_that_stays(project, lead, make_user, api_for):
    gone = make_user("gone", member=False)
    Membership.objects.create(project=project, user=gone, role=Membership.Role.STAFF)
    gone.is_active = False
    gone.save()
    refused = api_for(lead).patch("/projects/t/members/lead", {"role": "annotator"})
    assert refused.status_code == 409 and "last staff member" in refused.json()["message"]


def test_an_inactive_members_role_is_changed_as_on_the_page_but_an_inactive_user_is_not_added(
    project, lead, make_user, api_for
):
    api = api_for(lead)
    gone = make_user("gone", member=False)
    Membership.objects.create(project=project, user=gone, role=Membership.Role.STAFF)
    idle = make_user("idle", member=False)
    type(gone).objects.filter(pk__in=[gone.pk, idle.pk]).update(is_active=False)
    assert [m["username"] for m in api.get("/projects/t/members").json()] == ["gone", "lead"]
    changed = api.patch("/projects/t/members/gone", {"role": "annotator"})  # a deactivated account, demoted
    assert changed.status_code == 200 and changed.json() == {"username": "gone", "role": "annotator"}
    assert Membership.objects.get(project=project, user=gone).role == "annotator"
    added = api.post("/projects/t/members", {"username": "idle"})
    assert added.status_code == 409 and "inactive" in added.json()["message"]
    assert not Membership.objects.filter(user=idle).exists()
    assert api.post("/projects/t/members", {"username": "gone", "role": "staff"}).status_code == 200  # a member: role set


def test_staff_remove_or_demote_themselves_while_another_active_staff_member_remains(
    project, lead, make_user, api_for
):
    other = make_user("other", member=False)
    Membership.objects.create(project=project, user=other, role=Membership.Role.STAFF)
    other.is_active = False
    other.save()  # an inactive staff member manages nothing: lead is still the last
    api = api_for(lead)
    assert api.delete("/projects/t/members/lead").status_code == 409
    assert api.patch("/projects/t/members/lead", {"role": "annotator"}).status_code == 409
    other.is_active = True
    other.save()

    demoted = api.patch("/projects/t/members/lead", {"role": "annotator"})
    assert demoted.status_code == 200 and demoted.json() == {"username": "lead", "role": "annotator"}
    assert api.get("/projects/t/members").status_code == 403  # an annotator now
    api_for(other).post("/projects/t/members", {"username": "lead", "role": "staff"})
    assert api.delete("/projects/t/members/lead").status_code == 204
    assert not Membership.objects.filter(project=project, user=lead).exists()
    assert api.get("/projects/t").status_code == 404  # no longer a member
    events = AuditEvent.objects.filter(project=project, target="lead").order_by("id")
    assert [(e.action, e.actor.username) for e in events] == [
        ("member_add", "lead"), ("member_add", "other"), ("member_remove", "lead")
    ]
    last = api_for(other).delete("/projects/t/members/other")
    assert last.status_code == 409 and "other is the last staff member of t" in last.json()["message"]


def test_a_billion_ratings_per_run_is_refused_with_the_bound_in_the_message(project, lead, api_for):
    response = api_for(lead).patch("/projects/t/settings", {"min_new_ratings": 1e9})
    assert response.status_code == 400, response.content
    assert "less than or equal to 100000" in response.content.decode()
    assert api_for(lead).patch("/projects/t/settings", {"min_new_ratings": 100_000}).json()["min_new_ratings"] == 100_000
