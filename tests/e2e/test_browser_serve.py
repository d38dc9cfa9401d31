"""Serve in a real browser: it asks for a reason and a confirmation first; the reason lands in the audit log."""

import pytest

from webapp.policies.models import AuditEvent, ModelVersion

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_serve_asks_for_a_reason_and_a_confirmation(login_page, live_server, project, staff_user, screenshot):
    ModelVersion.objects.create(project=project, number=1, parent=project.served_version, kind="lora", weights_path="/nowhere")
    page = login_page(staff_user)
    page.goto(f"{live_server.url}/staff/p/{project.slug}/versions/")
    page.click('[data-promote="1"]')
    confirm = page.locator('[data-confirm-promote="1"]')
    confirm.wait_for()
    confirm.click()  # no reason yet: the browser keeps the form, nothing is sent
    assert page.locator("#reason-1").evaluate("t => t.validity.valueMissing")
    project.refresh_from_db()
    assert project.served_version.number == 0 and not AuditEvent.objects.filter(action="promote").exists()
    page.fill("#reason-1", "v1 reads better on the held-out prompts")
    screenshot(page, "serve-confirm")
    confirm.click()
    page.locator("#flash").get_by_text("Version 1 is now served").wait_for()
    project.refresh_from_db()
    assert project.served_version.number == 1
    assert AuditEvent.objects.get(action="promote").detail["reason"] == "v1 reads better on the held-out prompts"
    page.goto(f"{live_server.url}/staff/p/{project.slug}/versions/audit/")
    assert "v1 reads better on the held-out prompts" in page.locator("#audit").inner_text()
