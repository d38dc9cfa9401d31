"""Prompts, completions, leases and ratings.

Invariants live in the database:

- one rating per (annotator, completion);
- a completion is leased to at most ``ratings_per_item`` annotators at once:
  each lease takes one numbered *slot* of the completion, and
  (completion, slot) is unique, so two annotators racing for the same item
  cannot both win, on PostgreSQL or SQLite;
- an annotator holds at most one lease per completion.
"""

from django.conf import settings
from django.db import models

from webapp.policies.models import ModelVersion, Project

PROMPT_MAX_CHARS = 2000


class Prompt(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="prompts")
    text = models.TextField("text", help_text=f"What the model continues or answers (at most {PROMPT_MAX_CHARS} characters).")
    text_sha256 = models.CharField("text sha256", max_length=64, editable=False)
    source = models.CharField("source", max_length=200, blank=True, help_text="Where the prompt came from.")
    held_out = models.BooleanField(
        "held out", default=False, help_text="Used only to evaluate versions, never served to annotators."
    )
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "text_sha256"], name="prompt_text_unique_per_project"),
        ]

    def __str__(self):
        return self.text[:60]


class Completion(models.Model):
    """One sampled completion, with what off-policy training needs to reuse it.

    ``token_ids`` are exactly the tokens that were sampled (EOS included when
    the model stopped by itself) and ``behaviour_logprobs`` their per-token
    log-probabilities (natural log) under the sampling distribution of
    ``model_version``.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="completions")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="completions")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="completions")
    text = models.TextField("text")
    prompt_token_ids = models.JSONField("prompt token ids")
    token_ids = models.JSONField("completion token ids")
    behaviour_logprobs = models.JSONField("behaviour logprobs", help_text="One natural-log probability per token.")
    finished = models.BooleanField("ended at EOS", help_text="False when the completion was cut at the length limit.")
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["project", "model_version"])]

    def __str__(self):
        return f"completion {self.pk} of {self.model_version}"


class Lease(models.Model):
    completion = models.ForeignKey(Completion, on_delete=models.CASCADE, related_name="leases")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="leases")
    slot = models.PositiveSmallIntegerField("slot", help_text="0 ≤ slot < the project's ratings per item.")
    expires_at = models.DateTimeField("expires")
    fulfilled = models.BooleanField("rated", default=False, help_text="A fulfilled lease keeps its slot for good.")
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["completion", "slot"], name="lease_slot_unique"),
            models.UniqueConstraint(fields=["completion", "annotator"], name="lease_once_per_annotator"),
        ]


class Skip(models.Model):
    completion = models.ForeignKey(Completion, on_delete=models.CASCADE, related_name="skips")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="skips")
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["completion", "annotator"], name="skip_once_per_annotator")]


class Rating(models.Model):
    completion = models.ForeignKey(Completion, on_delete=models.CASCADE, related_name="ratings")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="ratings")
    score = models.SmallIntegerField("score", help_text="Likert 1–5.")
    comment = models.TextField("comment", blank=True, max_length=2000)
    seconds_spent = models.FloatField("seconds spent", null=True, blank=True)
    created_at = models.DateTimeField("created", auto_now_add=True)
    updated_at = models.DateTimeField("updated", auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["completion", "annotator"], name="rating_once_per_annotator"),
            models.CheckConstraint(condition=models.Q(score__gte=1, score__lte=5), name="rating_score_1_to_5"),
        ]

    def __str__(self):
        return f"{self.annotator} rated {self.completion_id}: {self.score}"
