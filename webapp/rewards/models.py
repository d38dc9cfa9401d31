"""Reward-model versions: artefacts fitted on a project's ratings.

A version is written only after its artefact is safely on disk (atomic folder,
SHA-256 recorded) and names the ratings it was fitted on (count, id list and a
hash of the sorted ids), so it can be reproduced from them. Scores and
uncertainties go onto ``annotation.Completion`` rows (``rm_score``,
``rm_uncertainty``), which the annotation app reads without importing this app.
"""

from django.db import models

from webapp.policies.models import Project


class RewardModelVersion(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="reward_models")
    number = models.PositiveIntegerField("number", help_text="1, 2, ... per project.")
    n_ratings = models.PositiveIntegerField("ratings", help_text="Ratings (rows) the version was fitted on.")
    n_judgments = models.PositiveIntegerField(
        "judgments", help_text="Rated completions (Likert/thumbs) plus comparisons (pairwise) fitted on."
    )
    rating_ids = models.JSONField("rating ids", default=list, help_text="Sorted ids of the ratings fitted on.")
    rating_ids_sha256 = models.CharField(
        "rating ids sha256", max_length=64, help_text="SHA-256 of the sorted rating ids, comma-separated."
    )
    config = models.JSONField("config", default=dict, help_text="pgcore RewardModelConfig used.")
    metrics = models.JSONField(
        "metrics", default=dict, help_text="Held-out metrics (fitted without the held-out share) and fit metrics."
    )
    backbone_path = models.CharField(
        "backbone folder",
        max_length=500,
        help_text="Frozen model the features come from, as the project records its base model (a name under "
        "REWARDLOOP_MODELS_DIR, or an absolute path).",
    )
    artefact_path = models.CharField(
        "artefact folder",
        max_length=500,
        help_text="Its name in the models storage (<project>/reward-models/rm-…), which each machine resolves in its "
        "own models folder or cache, or an absolute path recorded before names were portable.",
    )
    sha256 = models.CharField("sha256", max_length=64, help_text="Checksum of the artefact's weights.")
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        ordering = ["project", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["project", "number"], name="reward_model_number_unique_per_project"),
        ]

    def __str__(self):
        return f"{self.project.slug} RM{self.number}"
