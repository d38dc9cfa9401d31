"""Who may open what: per-project membership (annotator / staff), global staff."""

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction
from django.urls import reverse

from webapp.annotation.models import Lease, Rating, Skip
from webapp.annotation.services import lease_next
from webapp.policies.models import Membership, Project
from webapp.policies.services import membership_add, membership_remove

from tests.webapp.annotation_helpers import make_project

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def outsider(make_user):
    """Signed in, but a member of no project."""
    return make_user("outsider", member=False)


def test_a_non_member_gets_403_on_annotate_card_rate_skip_and_undo_and_nothing_is_written(
    client, outsider, project, make_completion
):
    completion = make_completion(project)
    client.force_login(outsider)
    slug = project.slug
    assert client.get(reverse("annotation:annotate", args=[slug])).status_code == 403
    assert client.get(reverse("annotation:card", args=[slug]), **HTMX).status_code == 403
    assert client.post(reverse("annotation:rate", args=[slug, completion.pk]), {"score": "5"}).status_code == 403
    assert client.post(reverse("annotation:skip", args=[slug, completion.pk])).status_code == 403
    assert client.post(reverse("annotation:undo", args=[slug])).status_code == 403
    assert not Lease.objects.exists() and not Rating.objects.exists() and not Skip.objects.exists()


def test_a_project_that_does_not_exist_answers_403_like_one_the_user_may_not_open(client, outsider, db):
    client.force_login(outsider)
    assert client.get(reverse("annotation:annotate", args=["nope"])).status_code == 403


def test_an_annotator_of_one_project_gets_403_in_another(client, make_user, project, tiny_model_dir, make_completion):
    other = make_project(tiny_model_dir, slug="other", mode="likert")
    user = make_user("one-project", member=False)
    membership_add(project=project, user=user)
    client.force_login(user)
    assert client.get(reverse("annotation:annotate", args=[project.slug])).status_code == 200
    assert client.get(reverse("annotation:annotate", args=[other.slug])).status_code == 403
    completion = make_completion(other)
    assert client.post(reverse("annotation:rate", args=[other.slug, completion.pk]), {"score": "5"}).status_code == 403


def test_home_lists_only_the_projects_the_user_is_a_member_of(client, make_user, project, tiny_model_dir):
    make_project(tiny_model_dir, slug="secret", mode="likert")
    make_project(tiny_model_dir, slug="third", mode="thumbs")
    user = make_user("two-projects", member=False)
    membership_add(project=project, user=user)
    membership_add(project=project.__class__.objects.get(slug="third"), user=user)
    client.force_login(user)
    body = client.get(reverse("home")).content.decode()
    assert "(t)" in body and "(third)" in body and "secret" not in body
    assert reverse("training:runs", args=["t"]) not in body  # annotators get no staff links


def test_an_annotator_of_a_single_project_goes_straight_to_it_and_an_outsider_is_told_to_ask(
    client, outsider, make_user, project
):
    client.force_login(outsider)
    response = client.get(reverse("home"))
    assert response.status_code == 200 and "not a member of any project" in response.content.decode()
    user = make_user("only-t", member=False)
    membership_add(project=project, user=user)
    client.force_login(user)
    assert client.get(reverse("home"))["Location"] == reverse("annotation:annotate", args=[project.slug])


def test_project_staff_open_their_projects_staff_pages_but_not_another_projects(
    client, make_user, project, tiny_model_dir
):
    other = make_project(tiny_model_dir, slug="other", mode="likert")
    lead = make_user("lead", member=False)  # not a global staff user
    membership_add(project=project, user=lead, role=Membership.Role.STAFF)
    client.force_login(lead)
    for name in ("training:runs", "policies:versions", "policies:audit", "annotation:figures"):
        assert client.get(reverse(name, args=[project.slug])).status_code == 200, name
        assert client.get(reverse(name, args=[other.slug])).status_code == 403, name
    page = client.get(reverse("annotation:annotate", args=[project.slug])).content.decode()
    assert reverse("training:runs", args=[project.slug]) in page  # the nav shows their staff pages
    assert reverse("admin:index") not in page  # but not the Django admin
    home = client.get(reverse("home")).content.decode()
    assert reverse("policies:versions", args=[project.slug]) in home


def test_global_staff_are_staff_of_every_project_without_a_membership(client, make_user, project):
    boss = make_user("global-boss", staff=True, member=False)
    client.force_login(boss)
    assert client.get(reverse("training:runs", args=[project.slug])).status_code == 200
    assert client.get(reverse("annotation:annotate", args=[project.slug])).status_code == 200


def test_one_membership_per_user_and_project_is_enforced_by_the_database(make_user, project):
    user = make_user("twice", member=False)
    Membership.objects.create(project=project, user=user)
    with pytest.raises(IntegrityError), transaction.atomic():
        Membership.objects.create(project=project, user=user, role=Membership.Role.STAFF)


def test_adding_a_member_again_changes_their_role_and_removing_them_frees_their_lease(
    make_user, project, make_completion
):
    membership_add(project=project, user=make_user("keeper", member=False), role="staff")  # not the last staff
    user = make_user("mover", member=False)
    membership_add(project=project, user=user)
    assert membership_add(project=project, user=user, role="staff").role == "staff"
    assert Membership.objects.get(user=user).role == "staff"
    make_completion(project)
    assert lease_next(project=project, annotator=user) is not None
    assert membership_remove(project=project, user=user) is True
    assert not Membership.objects.filter(user=user).exists() and not Lease.objects.exists()
    assert membership_remove(project=project, user=user) is False
    actions = list(project.audit_events.filter(target="mover").order_by("id").values_list("action", flat=True))
    assert actions == ["member_add", "member_add", "member_remove"]


def test_project_member_command_adds_and_removes(make_user, project):
    user = make_user("cli", member=False)
    call_command("project_member", project.slug, "cli", "--role", "staff")
    assert Membership.objects.get(user=user).role == "staff"
    with pytest.raises(CommandError, match="last staff member"):  # the same rule as the page and the API
        call_command("project_member", project.slug, "cli", "--remove")
    make_user("cli2", member=False)
    call_command("project_member", project.slug, "cli2", "--role", "staff")
    call_command("project_member", project.slug, "cli", "--remove")
    assert not Membership.objects.filter(user=user).exists()
    with pytest.raises(CommandError, match="No user is called 'ghost'"):
        call_command("project_member", project.slug, "ghost")


def test_create_project_command_adds_the_named_members(db, make_user, tiny_model_dir):
    make_user("ann1", member=False)
    make_user("lead1", member=False)
    call_command("create_project", "mine", str(tiny_model_dir), "--annotators", "ann1", "--staff", "lead1")
    assert dict(Membership.objects.values_list("user__username", "role")) == {"ann1": "annotator", "lead1": "staff"}


def test_the_member_commands_name_an_unknown_user_in_the_one_message_the_pages_and_the_api_use(db, make_user, project, tiny_model_dir):
    said = "No user is called 'ghost'; create the account first (Admin → Users)."
    with pytest.raises(CommandError) as refused:
        call_command("project_member", project.slug, "ghost")
    assert str(refused.value) == said
    make_user("ann1", member=False)
    with pytest.raises(CommandError) as refused:  # every unknown name at once, nothing created
        call_command("create_project", "mine", str(tiny_model_dir), "--annotators", "ann1,ghost", "--staff", "boo")
    assert str(refused.value) == f"No user is called 'boo'; create the account first (Admin → Users). {said}"
    assert not Project.objects.filter(slug="mine").exists()


def test_bootstrap_demo_makes_the_demo_users_members_of_the_demo_project(db, tiny_model_dir, models_dir, monkeypatch):
    from webapp.annotation.importers import PromptRow
    from webapp.annotation.services import prompts_create
    from webapp.policies.services import project_create

    demo = project_create(slug="demo", title="Demo", base_model_path=tiny_model_dir)
    prompts_create(project=demo, rows=[PromptRow(line=1, text="Once upon a time")])  # no VADER import needed
    monkeypatch.setenv("DEMO_PASSWORD", "pw-12345678")
    call_command("bootstrap_demo")
    roles = dict(Membership.objects.filter(project=demo).values_list("user__username", "role"))
    assert roles == {"admin": "staff", "annotator1": "annotator", "annotator2": "annotator"}


def test_a_403_page_says_why_in_the_sites_layout_and_links_home(client, make_user, project):
    # The guards' reasons ("Staff only.", "You are not a member of this project.") were raised but never
    # shown: Django's bare "403 Forbidden" page has no reason, no top bar and no way back.
    annotator = make_user("only-rates", member=False)
    membership_add(project=project, user=annotator)
    client.force_login(annotator)
    staff_page = client.get(reverse("training:runs", args=[project.slug]))
    assert staff_page.status_code == 403
    assert "Staff only." in staff_page.content.decode()
    assert f'href="{reverse("home")}"' in staff_page.content.decode()
    assert "Log out only-rates" in staff_page.content.decode()  # the site's top bar
    elsewhere = client.get(reverse("annotation:annotate", args=["nope"]))
    assert elsewhere.status_code == 403 and "You are not a member of this project." in elsewhere.content.decode()


def test_a_404_page_is_in_the_sites_layout_and_links_home(client, staff_user, project):
    client.force_login(staff_user)
    missing = client.get(reverse("training:run_detail", args=[project.slug, 999]))
    assert missing.status_code == 404
    body = missing.content.decode()
    assert f'href="{reverse("home")}"' in body and "Log out boss" in body
    assert "/runs/999/" in body  # says which address was not found
