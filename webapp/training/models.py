"""Training runs.

At most one run per project is queued or running at a time: a partial unique
index on (project) over the active statuses makes the database refuse a
second one, whatever races the scheduler and the "Train now" button run.
"""

from django.conf import settings
from django.db import models

from webapp.annotation.models import Prompt, Rating
from webapp.policies.models import ModelVersion, Project

ACTIVE_STATUSES = ("queued", "running")


class TrainingRun(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Stage(models.TextChoices):
        BATCHING = "batching", "building the batch"
        LOADING = "loading", "loading the model"
        UPDATING = "updating", "updating the policy"
        SAVING = "saving", "saving the new weights"
        EVALUATING = "evaluating", "evaluating on held-out prompts"
        PROMOTING = "promoting", "deciding whether to serve"

    class Trigger(models.TextChoices):
        SCHEDULE = "schedule", "Schedule"
        MANUAL = "manual", "Train now"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="training_runs")
    status = models.CharField("status", max_length=16, choices=Status.choices, default=Status.QUEUED)
    trigger = models.CharField("trigger", max_length=16, choices=Trigger.choices)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    parent_version = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, related_name="+", verbose_name="trained from"
    )
    result_version = models.ForeignKey(
        ModelVersion,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="produced_by",
        verbose_name="produced",
    )
    reward_model = models.ForeignKey(
        "rewards.RewardModelVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="training_runs",
        verbose_name="reward model",
        help_text="The reward-model version that scored this run's fresh samples (empty: human ratings only).",
    )
    config = models.JSONField("settings", default=dict, blank=True, help_text="The PGConfig the run used.")
    ratings = models.ManyToManyField(Rating, blank=True, related_name="training_runs", verbose_name="ratings used")
    metrics = models.JSONField("metrics", default=dict, blank=True)
    progress_step = models.PositiveIntegerField("step", default=0)
    progress_total = models.PositiveIntegerField("steps", default=0)
    progress_epoch = models.PositiveIntegerField("epoch", default=0, help_text="1-based epoch of the last step.")
    progress_epochs = models.PositiveIntegerField("epochs", default=0)
    curve = models.JSONField(
        "curve",
        default=list,
        blank=True,
        help_text="One entry per optimiser step: step, epoch, losses/pg_loss, objective/kl.",
    )
    cancel_requested_at = models.DateTimeField(
        "cancel requested", null=True, blank=True, help_text="The worker stops at the next minibatch."
    )
    cancel_requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    held_back_reason = models.TextField(
        "why its version was not served", blank=True, help_text="The promotion guard's reasons, if it held the version back."
    )
    error = models.TextField("error", blank=True)
    log = models.TextField("log", blank=True)
    promoted = models.BooleanField("served after the run", default=False)
    created_at = models.DateTimeField("created", auto_now_add=True)
    started_at = models.DateTimeField("started", null=True, blank=True)
    finished_at = models.DateTimeField("finished", null=True, blank=True)
    heartbeat_at = models.DateTimeField("last report from the worker", null=True, blank=True)
    stage = models.CharField(
        "stage", max_length=16, choices=Stage.choices, blank=True, help_text="What the worker was doing at its last report."
    )
    worker = models.CharField(
        "worker", max_length=200, blank=True, help_text="The Celery worker and process running it (hostname:pid)."
    )
    dispatched_at = models.DateTimeField(
        "sent to the workers",
        null=True,
        blank=True,
        help_text="When the broker accepted the run's task message; empty while the broker was unreachable "
        "(the schedule re-sends it).",
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["project"],
                condition=models.Q(status__in=ACTIVE_STATUSES),
                name="one_active_training_run_per_project",
            ),
        ]

    def __str__(self):
        return f"run {self.pk} of {self.project} ({self.status})"

    @property
    def is_active(self):
        return self.status in ACTIVE_STATUSES

    @property
    def duration_s(self):
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class TrainingStep(models.Model):
    """One step of a run's pipeline (see :mod:`webapp.training.pipeline`): its state, tries and timing.

    A run has one row per step, created with the run. A step runs only while
    it is ``queued`` and every step before it is ``done``; a ``done`` step is
    never run again (a re-delivered message moves on to the next step).
    """

    class Name(models.TextChoices):
        BATCH = "batch", "build the batch"
        UPDATE = "update", "update the policy"
        SAVE = "save", "save and register the version"
        EVALUATE = "evaluate", "evaluate on held-out prompts"
        PROMOTE = "promote", "promotion guard"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"
        SKIPPED = "skipped", "Skipped"

    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="steps")
    name = models.CharField("step", max_length=16, choices=Name.choices)
    position = models.PositiveSmallIntegerField("position", help_text="0-based place of the step in the pipeline.")
    status = models.CharField("status", max_length=16, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveSmallIntegerField("attempts", default=0, help_text="How many times a worker started it.")
    worker = models.CharField(
        "worker", max_length=200, blank=True, help_text="The Celery worker and process of its last attempt (hostname:pid)."
    )
    started_at = models.DateTimeField("started", null=True, blank=True)
    finished_at = models.DateTimeField("finished", null=True, blank=True)
    error = models.TextField("error", blank=True)

    class Meta:
        ordering = ["run", "position"]
        constraints = [
            models.UniqueConstraint(fields=["run", "name"], name="training_step_once_per_run"),
        ]

    def __str__(self):
        return f"{self.name} of run {self.run_id} ({self.status})"

    @property
    def duration_s(self):
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


# The pipeline's order: each step starts only when the one before it is done.
STEP_ORDER: list[str] = list(TrainingStep.Name.values)


class VersionSample(models.Model):
    """A version's completion of a held-out prompt: what the guard measures and staff compare.

    Generated once per (version, prompt) by a task, with a fixed seed, and kept:
    comparing two versions reads these rows and never regenerates.
    """

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="samples")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="version_samples")
    text = models.TextField("text")
    token_ids = models.JSONField("completion token ids")
    logprobs = models.JSONField("logprobs", help_text="Per-token logprobs under the version (natural log).")
    ref_logprobs = models.JSONField("base logprobs", help_text="Per-token logprobs of the same tokens under the base.")
    finished = models.BooleanField("ended at EOS")
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        ordering = ["prompt_id"]
        constraints = [
            models.UniqueConstraint(fields=["version", "prompt"], name="version_sample_once_per_prompt"),
        ]

    def __str__(self):
        return f"{self.version} on prompt {self.prompt_id}"
