"""The ratings export filtered by source: an empty source says which source was empty, and the audit
log says which source was exported."""

from webapp.annotation.models import Rating
from webapp.policies.models import AuditEvent


def test_an_empty_source_is_named_instead_of_blaming_neutral_likert_scores(project, annotator, make_completion, staff_client):
    for i in range(3):
        Rating.objects.create(completion=make_completion(project, text=f"c{i}"), annotator=annotator, score=5)
    answer = staff_client.post(f"/staff/p/{project.slug}/export/ratings/", {"format": "kto", "source": "production"},
                               follow=True)
    page = answer.content.decode()
    # The project has three clearly labelled ratings: none of them is a neutral 3.
    assert "ratings of 3 out of 5 are neutral" not in page
    assert "Nothing to export yet from production feedback" in page
    assert not AuditEvent.objects.filter(action="export_ratings").exists()


def test_the_audit_log_says_which_source_was_exported(project, annotator, make_completion, staff_client):
    Rating.objects.create(completion=make_completion(project, text="c"), annotator=annotator, score=5)
    answer = staff_client.post(f"/staff/p/{project.slug}/export/ratings/", {"format": "kto", "source": "annotator"})
    assert answer.status_code == 200 and answer.content.decode().count("\n") == 1
    staff_client.post(f"/staff/p/{project.slug}/export/ratings/", {"format": "kto"})
    details = [e.detail for e in AuditEvent.objects.filter(action="export_ratings").order_by("pk")]
    assert details == [{"rows": 1, "source": "annotator"}, {"rows": 1}]
