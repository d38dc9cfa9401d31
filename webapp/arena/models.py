"""Blind version arena: one prompt answered by two model versions, names and order hidden, and a vote.

Like Chatbot Arena (Chiang et al. 2024, "Chatbot Arena: An Open Platform for
Evaluating LLMs by Human Preference"), but between versions of one project's
policy, on its held-out prompts, with the completions every version already
wrote for the promotion guard (:class:`webapp.training.models.VersionSample`).
"""

from django.conf import settings
from django.db import models

from webapp.annotation.models import Choice, Prompt
from webapp.policies.models import ModelVersion, Project
from webapp.training.models import VersionSample


class ArenaVote(models.Model):
    """One matchup shown to one voter, and their vote once cast.

    A row is created when the matchup is shown (``choice`` empty: pending; a voter holds
    at most one per project) and keeps the hidden mapping: which version was shown on
    the left (A) and which on the right (B). Undo marks the vote ``undone_at`` (kept as
    history, never fitted) and shows the same matchup again as a new pending row.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="arena_votes")
    voter = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="arena_votes")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="+")
    version_a = models.ForeignKey(
        ModelVersion, on_delete=models.CASCADE, related_name="+", verbose_name="version shown as A (left)"
    )
    version_b = models.ForeignKey(
        ModelVersion, on_delete=models.CASCADE, related_name="+", verbose_name="version shown as B (right)"
    )
    sample_a = models.ForeignKey(VersionSample, on_delete=models.CASCADE, related_name="+")
    sample_b = models.ForeignKey(VersionSample, on_delete=models.CASCADE, related_name="+")
    choice = models.CharField(
        "vote", max_length=8, blank=True, choices=Choice.choices,
        help_text="Empty while the matchup waits for a vote. A was shown on the left, B on the right.",
    )
    shown_at = models.DateTimeField("shown", auto_now_add=True)
    voted_at = models.DateTimeField("voted", null=True, blank=True)
    undone_at = models.DateTimeField("undone", null=True, blank=True, help_text="Set when the voter undid this vote.")

    class Meta:
        ordering = ["-shown_at", "-id"]
        indexes = [models.Index(fields=["project", "voted_at"], name="arena_vote_project_voted")]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "voter"], condition=models.Q(choice=""), name="arena_one_pending_matchup_per_voter"
            ),
            models.CheckConstraint(
                condition=~models.Q(version_a=models.F("version_b")), name="arena_two_different_versions"
            ),
            models.CheckConstraint(
                condition=models.Q(choice__in=["", *Choice.values]), name="arena_choice_known"
            ),
        ]

    def __str__(self):
        return f"{self.voter} on v{self.version_a_id}/v{self.version_b_id}: {self.choice or 'pending'}"

    @property
    def winner_id(self) -> int | None:
        """The winning version's id, or None for a tie, both bad or a pending matchup."""
        return {Choice.A: self.version_a_id, Choice.B: self.version_b_id}.get(self.choice)
