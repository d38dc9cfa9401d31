"""A held-back version that staff served anyway is not labelled "Not served" on the versions page."""

import re

from arena_helpers import add_version


def version_row(page: str, number: int) -> str:
    return re.search(rf'(?s)<tr id="version-{number}".*?</tr>', page).group(0)


def test_a_version_served_anyway_says_so_instead_of_not_served(project, staff_client):
    version = add_version(project, 1)
    version.held_back_reason = "Not served: run 7 was cancelled by boss before promotion."
    version.save(update_fields=["held_back_reason"])
    url = f"/staff/p/{project.slug}/versions/"
    held = version_row(staff_client.get(url).content.decode(), 1)
    assert "held back" in held and "Not served: run 7 was cancelled" in held

    staff_client.post(f"/staff/p/{project.slug}/versions/1/promote/",
                      {"confirm": "1", "reason": "checked by hand", "override_guard": "1"})
    project.refresh_from_db()
    assert project.served_version.number == 1

    served = version_row(staff_client.get(url).content.decode(), 1)
    assert "served" in served
    assert "Not served" not in served and ">held back<" not in served
    # The guard's verdict is still shown, as what the serve overrode.
    assert "served anyway" in served and "run 7 was cancelled by boss before promotion." in served

    # Rolled back: v1 is held back again, with its reason as it was.
    staff_client.post(f"/staff/p/{project.slug}/versions/0/promote/", {"confirm": "1", "reason": "back"})
    again = version_row(staff_client.get(url).content.decode(), 1)
    assert ">held back<" in again and "Not served: run 7 was cancelled" in again
