"""The evaluation phase of a run reports its progress on its step, and the run page shows it."""

from webapp.annotation import services as annotation_services
from webapp.annotation.models import Completion, Prompt, Rating
from webapp.training import evaluation, pipeline
from webapp.training import services as training_services
from webapp.training.models import TrainingRun, TrainingStep, VersionSample


def test_the_evaluate_step_reports_each_batch_of_held_out_prompts_until_done(project, make_user, monkeypatch):
    for i in range(2):
        Prompt.objects.create(project=project, text=f"Another held-out prompt {i}", held_out=True)
    annotation_services.completion_pool_refill(project=project, seed=1)
    rater = make_user("rater")
    for completion in Completion.objects.filter(project=project, ratings__isnull=True):
        Rating.objects.create(completion=completion, annotator=rater, score=5 if completion.pk % 2 else 2)
    monkeypatch.setattr(evaluation, "EVAL_BATCH", 1)  # one prompt per batch: a report after each
    reports = []
    real = pipeline.evaluation_progress

    def recording(*, run, done, total, label):
        reports.append((done, total))
        real(run=run, done=done, total=total, label=label)

    monkeypatch.setattr(pipeline, "evaluation_progress", recording)

    run = training_services.training_run_execute(
        run_id=training_services.training_run_create(project=project, trigger="manual").pk
    )

    assert run.status == "succeeded", run.log
    # 3 held-out prompts, by v1 and by its never-measured parent v0: 6 completions.
    assert all(total == 6 for _, total in reports)
    done = [d for d, _ in reports]
    assert done[0] == 0 and done[-1] == 6 and done == sorted(done)
    assert set(range(7)) <= set(done)  # every batch was reported
    step = TrainingStep.objects.get(run=run, name="evaluate")
    assert (step.progress_done, step.progress_total) == (6, 6)
    assert VersionSample.objects.filter(version__project=project).count() == 6


def test_an_evaluation_resumed_after_a_crash_counts_what_was_already_written(project, monkeypatch):
    v0 = project.served_version
    for i in range(2):
        Prompt.objects.create(project=project, text=f"Another held-out prompt {i}", held_out=True)
    monkeypatch.setattr(evaluation, "EVAL_BATCH", 1)
    first = evaluation.samples_missing(version=v0)[0]
    VersionSample.objects.create(
        version=v0, prompt=first, text="written before the crash", token_ids=[1], logprobs=[-1.0], ref_logprobs=[-1.0],
        finished=True,
    )
    seen = []
    written = evaluation.version_samples_ensure(version=v0, on_progress=seen.append)
    assert written == 2 and seen == [1, 2]
    assert VersionSample.objects.get(version=v0, prompt=first).text == "written before the crash"


def test_a_batch_reports_each_completion_as_it_ends_and_its_last_once_stored(project):
    v0 = project.served_version
    for i in range(2):
        Prompt.objects.create(project=project, text=f"Another held-out prompt {i}", held_out=True)
    assert len(evaluation.samples_missing(version=v0)) == 3 < evaluation.EVAL_BATCH  # one batch
    seen = []

    def heard(n):
        seen.append((n, VersionSample.objects.filter(version=v0).count()))

    assert evaluation.version_samples_ensure(version=v0, on_progress=heard) == 3
    assert seen == [(1, 0), (2, 0), (3, 3)]  # 1 and 2 sampled while the batch runs; 3 once written


def test_the_run_page_shows_the_evaluation_phase_with_its_progress(project, staff_client):
    from webapp.training.models import STEP_ORDER

    run = TrainingRun.objects.create(
        project=project, trigger="manual", parent_version=project.served_version, status="running", stage="evaluating"
    )
    for position, name in enumerate(STEP_ORDER):
        TrainingStep.objects.create(run=run, name=name, position=position, status="done" if position < 3 else "queued")
    TrainingStep.objects.filter(run=run, name="evaluate").update(
        status="running", progress_done=5, progress_total=16, progress_label="held-out completions by v1"
    )
    page = staff_client.get(f"/staff/p/{project.slug}/runs/{run.pk}/").content.decode()
    assert "Now: evaluating on held-out prompts." in page
    assert 'id="eval-progress"' in page and "Evaluating: 5 of 16 held-out completions by v1" in page
    assert 'data-done="5" data-total="16"' in page
    fragment = staff_client.get(f"/staff/p/{project.slug}/runs/{run.pk}/status/", headers={"HX-Request": "true"})
    assert "Evaluating: 5 of 16" in fragment.content.decode()  # the poll brings it up to date
