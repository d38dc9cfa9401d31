"""No URL ever serves a bare fragment to a normal request or to Back navigation (issue 14: input).

The rule, checked on every URL pattern of the site (annotator, staff and Django admin pages):

- every response carries ``Vary: HX-Request`` or ``Cache-Control: no-store``, so no cache
  hands an htmx fragment to a plain visit (or the reverse);
- a plain request, and htmx's history restore, get a full page (or a redirect, or a
  non-HTML body such as a PNG), never a fragment;
- what htmx polls is a dedicated partial URL, never the page's own URL.
"""

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from webapp.policies.models import VersionExport
from webapp.training.models import TrainingRun

from tests.webapp.annotation_helpers import make_pair, make_project
from tests.webapp.arena_helpers import add_version

PLAIN = {}
HTMX = {"HTTP_HX_REQUEST": "true"}
HISTORY_RESTORE = {"HTTP_HX_REQUEST": "true", "HTTP_HX_HISTORY_RESTORE_REQUEST": "true"}
VARIANTS = {"plain": PLAIN, "htmx": HTMX, "history restore": HISTORY_RESTORE}
# Patterns without a name: only the admin's catch-all (it answers 404 or a redirect to a slash).
UNNAMED_ALLOWED = {"admin/(?P<url>.*)$"}


def _walk(patterns, prefix="", namespace=""):
    """(full name or None, route text, kwarg names) of every URL pattern of the site."""
    for p in patterns:
        route = prefix + str(p.pattern)
        if isinstance(p, URLResolver):
            ns = f"{namespace}{p.namespace}:" if p.namespace else namespace
            yield from _walk(p.url_patterns, route, ns)
        elif isinstance(p, URLPattern):
            names = set(re.findall(r"<(?:\w+:)?(\w+)>", route)) | set(re.findall(r"\(\?P<(\w+)>", route))
            yield (f"{namespace}{p.name}" if p.name else None), route, names


@pytest.fixture
def site(project, staff_user, annotator, make_completion, tmp_path, django_user_model):
    """One of everything a URL can point at."""
    completion = make_completion(project, text="walker completion")
    run = TrainingRun.objects.create(
        project=project, trigger="manual", parent_version=project.served_version, status=TrainingRun.Status.RUNNING
    )
    archive = tmp_path / "v0.zip"
    archive.write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    export = VersionExport.objects.create(
        version=project.served_version, status=VersionExport.Status.READY, archive_path=str(archive), size_bytes=22
    )
    superuser = django_user_model.objects.create_superuser("root", password="pw-12345678")
    values = {
        "slug": project.slug,
        "completion_id": completion.pk,
        "run_id": run.pk,
        "number": 0,
        "export_id": export.pk,
        "app_label": "annotation",
        "object_id": str(completion.pk),
        "content_type_id": 1,
        "id": str(staff_user.pk),
        "token_id": 999_999,  # nobody's token: the page answers 404, never 500
        "model": project.slug,  # /v1/models/<model>: without a token, a 401 in OpenAI's shape
        "vote_id": 999_999,  # nobody's arena matchup: refused with a message, never 500
        "feedback_id": 999_999,  # nobody's feedback: without a token a 401, never 500
        "rest": "embeddings",  # /v1/<rest> not served: a 404 in OpenAI's error shape, never 500
        "username": "nobody-here",  # not a member: the members routes answer 404, never 500
    }
    return {"project": project, "values": values, "superuser": superuser, "annotator": annotator, "staff": staff_user}


def _urls(values):
    urls = []
    for name, route, kwargs in _walk(get_resolver().url_patterns):
        if name is None:
            if route in UNNAMED_ALLOWED:
                continue
            assert "(?P<" not in route and "^" not in route, f"unnamed regex URL pattern {route!r}: name it"
            # an unnamed path() (the admin's old-style object URL): fill its converters in place
            urls.append((route, "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(values[m.group(1)]), route)))
            continue
        urls.append((name, reverse(name, kwargs={k: values[k] for k in kwargs})))
    return urls


def _is_full_page(response) -> bool:
    body = response.content.decode(errors="replace").lstrip().lower()
    return body.startswith("<!doctype html") or body.startswith("<html")


def _check(response, url, variant, method):
    where = f"{method} {url} ({variant}) -> {response.status_code}"
    vary = {v.strip().lower() for v in response.get("Vary", "").split(",")}
    assert "hx-request" in vary or "no-store" in response.get("Cache-Control", ""), f"{where}: no Vary: HX-Request"
    assert response.status_code < 500, where
    if variant != "htmx" and response.status_code == 200 and response.get("Content-Type", "").startswith("text/html"):
        assert _is_full_page(response), f"{where}: a bare fragment for a {variant} request"


def test_every_url_sends_vary_hx_request_and_never_a_bare_fragment_to_a_plain_get(client, site):
    urls = _urls(site["values"])
    assert len(urls) > 40 and any(name == "annotation:card" for name, _ in urls)
    for who in ("annotator", "staff", "superuser", None):
        for name, url in urls:
            for variant, headers in VARIANTS.items():
                client.logout()
                if who:
                    client.force_login(site[who])
                if "export_download" in name and variant == "htmx":
                    continue  # a download is a file whatever asks for it
                _check(client.get(url, **headers), url, variant, "GET")


def test_every_post_answers_with_vary_and_a_plain_post_never_gets_a_fragment(client, site):
    # The rate/skip/undo endpoints answer htmx with the next card and a plain form post with a redirect.
    urls = [(n, u) for n, u in _urls(site["values"]) if not n.startswith("admin:") and n not in ("logout", "login")]
    for who in ("annotator", "staff"):
        for name, url in urls:
            for variant in ("plain", "htmx"):
                client.force_login(site[who])
                _check(client.post(url, {}, **VARIANTS[variant]), url, variant, "POST")


def test_a_fragment_is_never_stored_by_a_cache(client, site):
    client.force_login(site["annotator"])
    card = client.get(reverse("annotation:card", args=[site["project"].slug]), **HTMX)
    assert "no-store" in card["Cache-Control"] and "HX-Request" in card["Vary"]
    page = client.get(reverse("annotation:annotate", args=[site["project"].slug]))
    assert "HX-Request" in page["Vary"]


def _polled_urls(body: str) -> list[str]:
    return [
        m.group(1).replace("&amp;", "&")
        for m in re.finditer(r'hx-get="([^"]+)"[^>]*hx-trigger="every', body)
    ]


def test_pages_poll_dedicated_partial_urls_that_redirect_a_plain_visit_to_the_page(
    client, site, tiny_model_dir, make_completion
):
    project = site["project"]
    run_id = site["values"]["run_id"]
    VersionExport.objects.create(version=project.served_version, status=VersionExport.Status.QUEUED)
    add_version(project, 1, prompts=[])  # its held-out completions are missing: the compare page polls
    client.force_login(site["staff"])
    pages = [
        reverse("training:runs", args=[project.slug]),
        reverse("training:run_detail", args=[project.slug, run_id]),
        reverse("policies:versions", args=[project.slug]),
        reverse("training:compare", args=[project.slug]) + "?a=0&b=1",
    ]
    polled_somewhere = 0
    for page in pages:
        body = client.get(page).content.decode()
        polled = _polled_urls(body)
        assert polled, f"{page} polls nothing (the fixture should make it poll)"
        for url in polled:
            polled_somewhere += 1
            assert url.split("?")[0] != page.split("?")[0], f"{page} polls itself"
            fragment = client.get(url, **HTMX)
            assert fragment.status_code == 200 and not _is_full_page(fragment)
            plain = client.get(url)
            assert plain.status_code == 302 and plain["Location"].split("#")[0].split("?")[0] == page.split("?")[0]
            restored = client.get(url, **HISTORY_RESTORE)
            assert restored.status_code == 302
    assert polled_somewhere >= 4

    # The annotator's page loads its card by POST to the next-item URL (a page load writes
    # nothing); the waiting card polls that same POST, which redirects a plain visit to the page.
    client.force_login(site["annotator"])
    empty = make_project(tiny_model_dir, slug="empty", mode="likert")
    page_url = reverse("annotation:annotate", args=[empty.slug])
    next_url = reverse("annotation:next", args=[empty.slug])
    body = client.get(page_url).content.decode()
    assert _polled_urls(body) == [] and f'hx-post="{next_url}"' in body
    waiting = client.post(next_url, **HTMX)
    assert waiting.status_code == 200 and not _is_full_page(waiting)
    assert re.search(rf'hx-post="{re.escape(next_url)}"[^>]*hx-trigger="every', waiting.content.decode())
    plain = client.post(next_url)
    assert plain.status_code == 302 and plain["Location"] == page_url


def test_a_pairwise_card_fragment_is_not_cached_either(client, tiny_model_dir, annotator, make_completion):
    project = make_project(tiny_model_dir, slug="pw", mode="pairwise")
    make_pair(project, make_completion)
    client.force_login(annotator)
    response = client.get(reverse("annotation:card", args=[project.slug]), **HTMX)
    assert "no-store" in response["Cache-Control"] and "HX-Request" in response["Vary"]
