"""The runs page shows the completion pool as the refill counts it: free, leased and in all."""

import re

from django.urls import reverse

from webapp.annotation import services


def _pool_line(html: str) -> dict[str, int]:
    return {name: int(n) for name, n in re.findall(r'class="pool-(free|leased|size)">(\d+)<', html)}


def test_runs_page_shows_free_leased_and_total_pool_items(staff_client, project, make_completion, make_user):
    project.pool_target = 6
    project.save()
    for i in range(4):
        make_completion(project, text=f"ready {i}")
    for name in ("holder0", "holder1"):
        assert services.lease_next(project=project, annotator=make_user(name)) is not None

    html = staff_client.get(reverse("training:runs", args=[project.slug])).content.decode()

    assert _pool_line(html) == {"free": 2, "leased": 2, "size": 4}
    assert "free of 6" in html  # the refill keeps the free items, not all open ones, at pool_target
    fragment = staff_client.get(reverse("training:runs_table", args=[project.slug]), headers={"HX-Request": "true"})
    assert _pool_line(fragment.content.decode()) == {"free": 2, "leased": 2, "size": 4}
