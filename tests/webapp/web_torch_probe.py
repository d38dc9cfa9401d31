"""Run in a fresh interpreter by ``test_web_never_imports_torch.py``: boot the web app, serve its pages.

Prints one JSON object: each step's name with whether ``torch`` was in ``sys.modules`` after it,
and the stack of the first import of torch (empty when there was none). Takes the path of a
model folder (any folder with a config.json: nothing here loads a model) as its argument.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

first_import: list[str] = []


class _TorchWatch:
    """A meta-path finder that records who imports torch first, then lets the import go on."""

    def find_spec(self, name, path=None, target=None):
        if (name == "torch" or name.startswith("torch.")) and not first_import:
            first_import.extend(traceback.format_stack()[:-1])
        return None


sys.meta_path.insert(0, _TorchWatch())
steps: list[tuple[str, bool]] = []


def step(name: str) -> None:
    steps.append((name, "torch" in sys.modules))


def main(model_dir: str) -> None:
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    step("setup and migrate")

    from django.core.wsgi import get_wsgi_application
    from django.urls import get_resolver

    get_wsgi_application()
    get_resolver().url_patterns  # imports every app's urls, views and api modules
    import webapp.api  # noqa: F401
    step("URLconf, views and API")

    from django.contrib.auth.models import User
    from django.test import Client

    from webapp.accounts.services import api_token_create
    from webapp.annotation.importers import PromptRow
    from webapp.annotation.models import Completion
    from webapp.annotation.services import prompts_create
    from webapp.policies.services import membership_add, project_create

    project = project_create(slug="t", title="T", base_model_path=model_dir)
    prompts_create(project=project, rows=[PromptRow(line=i + 1, text=f"prompt {i}") for i in range(3)])
    for prompt in project.prompts.all():
        Completion.objects.create(
            project=project, prompt=prompt, model_version=project.served_version, text="x",
            prompt_token_ids=[1], token_ids=[2], behaviour_logprobs=[-1.0], finished=True,
        )
    boss = User.objects.create_user("boss", password="x", is_staff=True)
    annotator = User.objects.create_user("ann", password="x")
    membership_add(project=project, user=annotator)
    staff, ann = Client(), Client()
    staff.force_login(boss)
    ann.force_login(annotator)
    for url in ("/", "/healthz", "/p/t/annotate/", "/p/t/annotate/history/", "/p/t/figures/", "/staff/p/t/runs/",
                "/staff/p/t/versions/", "/staff/p/t/reward-models/", "/staff/p/t/compare/", "/api/v1/docs",
                "/api/v1/openapi.json", "/admin/", "/accounts/tokens/"):
        status = staff.get(url).status_code
        assert status < 500, (url, status)
    step("GET the main pages")

    ann.post("/p/t/annotate/next/")
    completion = Completion.objects.filter(leases__isnull=False).first() or Completion.objects.first()
    ann.post(f"/p/t/annotate/{completion.pk}/rate/", {"score": 4})
    step("annotate: next item and rate")

    staff.post("/staff/p/t/train/", {})
    step("Train now")
    staff.post("/staff/p/t/reward-models/fit/", {})
    step("Fit reward model now")

    _, secret = api_token_create(user=boss, name="probe")
    bearer = {"Authorization": f"Bearer {secret}"}
    for method, url in (("get", "/api/v1/projects"), ("get", "/api/v1/projects/t/versions"),
                        ("post", "/api/v1/projects/t/queue/next"), ("get", "/api/v1/projects/t/runs"),
                        ("post", "/api/v1/projects/t/runs"), ("get", "/api/v1/projects/t/reward-model"),
                        ("post", "/api/v1/projects/t/versions/0/export"), ("get", "/api/v1/projects/t/versions/0/export"),
                        ("get", "/api/v1/projects/t/versions/0/download"), ("get", "/api/v1/projects/t/compare?a=0&b=1")):
        response = getattr(staff, method)(url, content_type="application/json", headers=bearer)
        assert response.status_code < 500, (url, response.status_code)
    step("REST API")

    from django.conf import settings

    settings.REWARDLOOP_INFERENCE_URL = "http://127.0.0.1:9"  # down: the route answers 503 without a model
    chat = {"model": "t", "messages": [{"role": "user", "content": "hi"}]}
    assert staff.get("/v1/models", headers=bearer).status_code == 200
    response = staff.post("/v1/chat/completions", chat, content_type="application/json", headers=bearer)
    assert response.status_code == 503, response.content
    step("OpenAI-compatible routes")


if __name__ == "__main__":
    main(sys.argv[1])
    print(json.dumps({"steps": steps, "first_import": first_import}))
