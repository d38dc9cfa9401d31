"""Every /admin/ URL answers 403 to a signed-in person who is not staff."""

import pytest
from django.contrib import admin
from django.urls import reverse


def admin_urls(project):
    urls = [
        reverse("admin:index"),
        reverse("admin:login"),
        reverse("admin:logout"),
        reverse("admin:password_change"),
        reverse("admin:jsi18n"),
        "/admin/no-such-page/",
        "/admin/no-such-page",
    ]
    for model in admin.site._registry:
        meta = model._meta
        urls.append(reverse("admin:app_list", args=[meta.app_label]))
        urls.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"))
        urls.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_add"))
        urls.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[1]))
        urls.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_delete", args=[1]))
        urls.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_history", args=[1]))
    return sorted(set(urls))


@pytest.mark.parametrize("member", [True, False], ids=["project-annotator", "no-project"])
def test_every_admin_url_answers_403_to_a_signed_in_non_staff_user(client, make_user, project, member):
    client.force_login(make_user("plain", member=member))
    for url in admin_urls(project):
        for method in ("get", "post"):
            response = getattr(client, method)(url)
            assert response.status_code == 403, (method, url, response.status_code)


def test_project_staff_who_are_not_global_staff_also_get_403_in_the_admin(client, make_user, project):
    from webapp.policies.services import membership_add

    lead = make_user("lead", member=False)
    membership_add(project=project, user=lead, role="staff")
    client.force_login(lead)
    assert client.get(reverse("admin:index")).status_code == 403


def test_anonymous_visitors_still_get_the_admin_login_and_staff_the_admin(client, staff_user):
    response = client.get(reverse("admin:index"))
    assert response.status_code == 302 and reverse("admin:login") in response["Location"]
    assert client.get(reverse("admin:login")).status_code == 200
    client.force_login(staff_user)
    assert client.get(reverse("admin:index")).status_code == 200
