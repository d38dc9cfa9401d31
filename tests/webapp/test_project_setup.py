"""Setting a project up in the browser's forms: create, settings and guidelines, prompt import with a
preview, members; permissions and audit."""

import json

from django.core.files.uploadedfile import SimpleUploadedFile

from tests.webapp.api_helpers import api_for  # noqa: F401 - fixture
from webapp.annotation.models import Prompt
from webapp.policies.models import AuditEvent, Membership, Project


def jsonl(rows) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


def preview_page(client, project, name: str, body: bytes) -> str:
    """The setup page answering a preview of the file ``name`` holding ``body``."""
    return client.post(
        f"/staff/p/{project.slug}/setup/prompts/preview/", {"file": SimpleUploadedFile(name, body)}
    ).content.decode()


def test_global_staff_create_a_project_and_become_its_staff(client, make_user, tiny_model_dir):
    boss = make_user("boss", staff=True, member=False)
    client.force_login(boss)
    assert client.get("/projects/new/").status_code == 200
    bad = client.post("/projects/new/", {"slug": "reviews", "title": "Reviews", "base_model_path": "/no/such/folder",
                                         "rating_mode": "likert", "ratings_per_item": 1, "completions_per_prompt": 1,
                                         "pool_target": 32})
    assert bad.status_code == 400 and "is not a Hugging Face model folder" in bad.content.decode()
    assert not Project.objects.exists()
    answer = client.post("/projects/new/", {"slug": "reviews", "title": "Reviews", "base_model_path": str(tiny_model_dir),
                                            "rating_mode": "thumbs", "guidelines": "# Be kind", "ratings_per_item": 2,
                                            "completions_per_prompt": 1, "pool_target": 16})
    assert answer.status_code == 302 and answer["Location"] == "/staff/p/reviews/setup/"
    project = Project.objects.get(slug="reviews")
    assert project.rating_mode == "thumbs" and project.ratings_per_item == 2 and project.served_version.number == 0
    assert Membership.objects.get(project=project, user=boss).role == "staff"
    assert AuditEvent.objects.filter(project=project, action="member_add", actor=boss).exists()


def test_only_global_staff_create_projects_and_only_a_projects_staff_set_it_up(client, project, annotator, make_user):
    client.force_login(annotator)
    assert client.get("/projects/new/").status_code == 403
    assert client.get(f"/staff/p/{project.slug}/setup/").status_code == 403
    assert client.post(f"/staff/p/{project.slug}/setup/settings/", {"title": "x"}).status_code == 403
    assert client.post(f"/staff/p/{project.slug}/setup/members/add/", {"username": "ann", "role": "staff"}).status_code == 403
    assert Membership.objects.get(project=project, user=annotator).role == "annotator"


def test_settings_and_markdown_guidelines_are_saved_audited_and_shown_rendered(staff_client, project):
    url = f"/staff/p/{project.slug}/setup/"
    form = {"title": "Film reviews", "rating_mode": "pairwise", "guidelines": "## Rules\n\n- be *fair*\n\n<script>x</script>",
            "ratings_per_item": 1, "completions_per_prompt": 1, "pool_target": 8}
    assert staff_client.post(f"{url}settings/", form).status_code == 302
    project.refresh_from_db()
    assert (project.title, project.rating_mode, project.pool_target) == ("Film reviews", "pairwise", 8)
    page = staff_client.get(url).content.decode()
    assert "<h2>Rules</h2>" in page and "<em>fair</em>" in page and "&lt;script&gt;x&lt;/script&gt;" in page
    event = AuditEvent.objects.get(action="settings", target="project setup")
    assert event.detail["rating_mode"] == ["likert", "pairwise"] and event.detail["pool_target"] == [4, 8]
    bad = staff_client.post(f"{url}settings/", {**form, "pool_target": 0})
    assert bad.status_code == 400 and "Nothing was saved" in bad.content.decode()


def test_saving_the_settings_form_as_a_browser_does_leaves_untouched_guidelines_unchanged(staff_client, project):
    """A browser sends a textarea's line breaks as CRLF: saving only a new mode must not rewrite the
    guidelines nor audit them as changed."""
    project.guidelines = "Rate the continuation:\n5 = great; 1 = broken."
    project.save()
    form = {"title": project.title, "rating_mode": "pairwise", "guidelines": project.guidelines.replace("\n", "\r\n"),
            "ratings_per_item": 1, "completions_per_prompt": 1, "pool_target": project.pool_target}
    assert staff_client.post(f"/staff/p/{project.slug}/setup/settings/", form).status_code == 302
    project.refresh_from_db()
    assert project.rating_mode == "pairwise" and project.guidelines == "Rate the continuation:\n5 = great; 1 = broken."
    assert list(AuditEvent.objects.get(action="settings", target="project setup").detail) == ["rating_mode"]


def test_rubric_mode_before_any_rubric_is_refused_on_the_mode_field_not_a_server_error(staff_client, project, tiny_model_dir):
    form = {"title": project.title, "rating_mode": "rubric", "guidelines": "", "ratings_per_item": 1,
            "completions_per_prompt": 1, "pool_target": project.pool_target}
    answer = staff_client.post(f"/staff/p/{project.slug}/setup/settings/", form)
    assert answer.status_code == 400 and "needs a rubric" in answer.content.decode()
    project.refresh_from_db()
    assert project.rating_mode == "likert" and not AuditEvent.objects.filter(action="settings").exists()
    new = {"slug": "rb", "title": "Rb", "base_model_path": str(tiny_model_dir), "rating_mode": "rubric",
           "ratings_per_item": 1, "completions_per_prompt": 1, "pool_target": 8}
    answer = staff_client.post("/projects/new/", new)
    assert answer.status_code == 400 and "needs a rubric" in answer.content.decode()
    assert not Project.objects.filter(slug="rb").exists()


def test_an_import_is_previewed_first_then_stored_whole(staff_client, project, settings, tmp_path, django_capture_on_commit_callbacks):
    settings.DATA_DIR = tmp_path
    url = f"/staff/p/{project.slug}/setup/prompts/"
    before = Prompt.objects.filter(project=project).count()
    rows = [{"text": f"New prompt {i}", "held_out": i == 0} for i in range(12)]
    preview = staff_client.post(f"{url}preview/", {"file": SimpleUploadedFile("p.jsonl", jsonl(rows))})
    page = preview.content.decode()
    assert preview.status_code == 200 and "12 prompts, 1 held out" in page and "New prompt 9" in page
    assert "New prompt 10" not in page  # the first ten only
    assert Prompt.objects.filter(project=project).count() == before  # nothing stored by a preview
    upload = page.split('name="upload" value="')[1].split('"')[0]
    assert (tmp_path / "uploads" / upload).exists()
    with django_capture_on_commit_callbacks(execute=True):  # the upload is removed once the import commits
        done = staff_client.post(f"{url}import/", {"upload": upload}, follow=True).content.decode()
    assert "Imported 12 prompts" in done
    assert Prompt.objects.filter(project=project).count() == before + 12
    assert AuditEvent.objects.get(target="prompts imported").detail == {"created": 12, "duplicates": 0}
    again = staff_client.post(f"{url}import/", {"upload": upload}, follow=True).content.decode()
    assert "That upload is gone" in again
    assert "That upload is gone" in staff_client.post(f"{url}import/", {"upload": "../../etc/passwd"}, follow=True).content.decode()


def test_a_file_with_bad_lines_shows_its_errors_and_offers_no_import(staff_client, project, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    body = b'{"text": "fine"}\n{"text": ""}\nnot json\n'
    answer = staff_client.post(f"/staff/p/{project.slug}/setup/prompts/preview/", {"file": SimpleUploadedFile("p.jsonl", body)})
    page = answer.content.decode()
    assert answer.status_code == 400 and "Not imported: 2 bad lines" in page
    assert "<td>2</td>" in page and "<td>3</td>" in page and 'id="import-confirm"' not in page
    wrong = staff_client.post(f"/staff/p/{project.slug}/setup/prompts/preview/", {"file": SimpleUploadedFile("p.txt", b"x")})
    assert wrong.status_code == 400 and "Upload a .jsonl or .csv file" in wrong.content.decode()


def test_members_are_added_by_username_and_removed(staff_client, staff_user, project, make_user):
    newcomer = make_user("newcomer", member=False)
    url = f"/staff/p/{project.slug}/setup/members/"
    missing = staff_client.post(f"{url}add/", {"username": "ghost", "role": "annotator"})
    assert missing.status_code == 400 and "No user is called &#x27;ghost&#x27;" in missing.content.decode()
    staff_client.post(f"{url}add/", {"username": "newcomer", "role": "annotator"})
    assert Membership.objects.get(project=project, user=newcomer).role == "annotator"
    staff_client.post(f"{url}remove/", {"username": "newcomer"})
    assert not Membership.objects.filter(project=project, user=newcomer).exists()
    refused = staff_client.post(f"{url}remove/", {"username": staff_user.username}, follow=True).content.decode()
    assert f"{staff_user.username} is the last staff member of {project.slug}" in refused
    assert [e.action for e in AuditEvent.objects.filter(target="newcomer").order_by("id")] == ["member_add", "member_remove"]


def test_a_staff_member_who_removes_themselves_goes_home_and_the_last_one_cannot(client, project, make_user):
    first, second = make_user("first", member=False), make_user("second", member=False)
    for user in (first, second):
        Membership.objects.create(project=project, user=user, role=Membership.Role.STAFF)
    client.force_login(first)
    url = f"/staff/p/{project.slug}/setup/members/"
    left = client.post(f"{url}remove/", {"username": "first"})
    assert left.status_code == 302 and left["Location"] == "/"
    assert not Membership.objects.filter(project=project, user=first).exists()
    client.force_login(second)
    demoted = client.post(f"{url}add/", {"username": "second", "role": "annotator"})
    assert demoted.status_code == 400 and "second is the last staff member" in demoted.content.decode()
    refused = client.post(f"{url}remove/", {"username": "second"})
    assert refused.status_code == 400 and "second is the last staff member" in refused.content.decode()
    assert Membership.objects.get(project=project, user=second).role == Membership.Role.STAFF


def test_the_preview_names_the_column_the_prompts_were_read_from(staff_client, project, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    page = preview_page(staff_client, project, "p.csv", b"prompt,reference\nSay hi,Hi!\n")
    assert "Prompt text read from <code>prompt</code>; not read: <code>reference</code>" in page
    both = staff_client.post(
        f"/staff/p/{project.slug}/setup/prompts/preview/", {"file": SimpleUploadedFile("q.csv", b"text,prompt\na,b\n")}
    )
    assert both.status_code == 400 and "ambiguous" in both.content.decode() and 'id="import-confirm"' not in both.content.decode()


def test_the_import_result_says_which_column_the_prompts_were_read_from(staff_client, project, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    url = f"/staff/p/{project.slug}/setup/prompts/"
    page = staff_client.post(f"{url}preview/", {"file": SimpleUploadedFile("p.csv", b"prompt,reference\nSay hi,Hi!\n")})
    upload = page.content.decode().split('name="upload" value="')[1].split('"')[0]

    done = staff_client.post(f"{url}import/", {"upload": upload}, follow=True).content.decode()

    assert "Imported 1 prompts. Prompt text read from &#x27;prompt&#x27;; not read: &#x27;reference&#x27;." in done


def test_the_last_staff_member_cannot_demote_themselves_or_be_removed_on_the_page(client, project, make_user):
    lead = make_user("lead", member=False)
    Membership.objects.create(project=project, user=lead, role=Membership.Role.STAFF)
    client.force_login(lead)
    url = f"/staff/p/{project.slug}/setup/members/"
    demoted = client.post(f"{url}add/", {"username": "lead", "role": "annotator"})
    assert demoted.status_code == 400 and "last staff member" in demoted.content.decode()
    assert 'id="member-add-form"' in demoted.content.decode()
    boss = make_user("boss", staff=True, member=False)
    client.force_login(boss)
    removed = client.post(f"{url}remove/", {"username": "lead"})
    assert removed.status_code == 400 and "last staff member" in removed.content.decode()
    assert Membership.objects.get(project=project, user=lead).role == "staff"
    assert not AuditEvent.objects.filter(project=project, action__in=["member_add", "member_remove"]).exists()


def test_the_page_changes_an_inactive_members_role_and_refuses_an_inactive_newcomer(staff_client, project, make_user):
    gone = make_user("gone", member=False)
    Membership.objects.create(project=project, user=gone, role=Membership.Role.STAFF)
    idle = make_user("idle", member=False)
    type(gone).objects.filter(pk__in=[gone.pk, idle.pk]).update(is_active=False)
    url = f"/staff/p/{project.slug}/setup/members/"
    assert staff_client.post(f"{url}add/", {"username": "gone", "role": "annotator"}).status_code == 302
    assert Membership.objects.get(project=project, user=gone).role == "annotator"
    refused = staff_client.post(f"{url}add/", {"username": "idle", "role": "annotator"})
    assert refused.status_code == 400 and "inactive" in refused.content.decode()
    assert not Membership.objects.filter(user=idle).exists()


def test_the_page_and_the_api_list_the_members_from_one_selector(staff_client, project, make_user, api_for):
    from webapp.policies.selectors import project_members

    for name in ("zed", "amy"):
        make_user(name)
    expected = [(m.user.username, m.role) for m in project_members(project=project)]
    assert [name for name, _ in expected] == ["amy", "zed", "boss"]  # annotators first, then staff, by name
    page = staff_client.get(f"/staff/p/{project.slug}/setup/")
    assert [(m.user.username, m.role) for m in page.context["members"]] == expected
    listed = api_for(Membership.objects.get(project=project, role="staff").user).get(f"/projects/{project.slug}/members")
    assert [(m["username"], m["role"]) for m in listed.json()] == expected


def test_a_rejected_files_good_lines_are_headed_as_not_imported(staff_client, project, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    page = preview_page(staff_client, project, "p.jsonl", b'{"text": "fine one"}\n{"text": "fine two"}\n{"text": ""}\n')
    heading = page.find('id="import-good-rows"')
    assert -1 < page.find('id="import-errors"') < heading < page.find('id="import-rows"') < page.find("fine two")
    assert "Not imported either: the good lines before the first bad one" in page and "refused whole" in page
    assert not Prompt.objects.filter(project=project, text__startswith="fine").exists()


def test_an_accepted_files_rows_have_no_not_imported_heading(staff_client, project, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    page = preview_page(staff_client, project, "p.jsonl", b'{"text": "fine"}\n')
    assert 'id="import-rows"' in page and 'id="import-good-rows"' not in page
