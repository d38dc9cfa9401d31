"""Prompts, completions, leases and ratings.

Invariants live in the database:

- one rating per (annotator, completion);
- a completion is leased to at most ``ratings_per_item`` annotators at once:
  each lease takes one numbered *slot* of the completion, and
  (completion, slot) is unique, so two annotators racing for the same item
  cannot both win, on PostgreSQL or SQLite;
- an annotator holds at most one lease per completion;
- a judgment is exactly one of a Likert score, a thumb or one side of a
  pairwise comparison (check constraint on ``Rating``);
- a completion belongs to at most one pair, and an annotator decides a pair
  once (unique (pair, annotator) on ``Comparison``).

Pairwise items are leased, skipped and counted through the pair's
``completion_a`` (its *anchor*), so one lease/slot mechanism serves every
rating mode. A comparison writes one ``Rating`` row for each of its two
completions (``Rating.comparison``), so training, the pool and the queue see
pairwise work through the same table as Likert and thumbs ratings.

Ranking items are a :class:`RankGroup` of k completions of one prompt and
version, leased through the group's ``anchor`` the same way. A
:class:`Ranking` (one annotator's order, best first) writes one ``Rating``
per completion (``Rating.ranking`` and its ``rank``) and one
:class:`RankedPair` per pairwise comparison the order implies (k(k-1)/2 of
them), which the exports and the reward model read as preference pairs.
"""

import hashlib

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from webapp.policies.models import ModelVersion, Project, RatingMode

PROMPT_MAX_CHARS = 2000


class Prompt(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="prompts")
    text = models.TextField("text", help_text=f"What the model continues or answers (at most {PROMPT_MAX_CHARS} characters).")
    text_sha256 = models.CharField("text sha256", max_length=64, editable=False)
    source = models.CharField("source", max_length=200, blank=True, help_text="Where the prompt came from.")
    held_out = models.BooleanField(
        "held out", default=False, help_text="Used only to evaluate versions, never served to annotators."
    )
    from_production = models.BooleanField(
        "from production",
        default=False,
        help_text="Sent to the served model through the OpenAI-compatible API; never sampled for the annotation pool.",
    )
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "text_sha256"], name="prompt_text_unique_per_project"),
        ]

    def __str__(self):
        return self.text[:60]

    @staticmethod
    def digest(text: str) -> str:
        """``text_sha256`` of a prompt text: hex SHA-256 of its UTF-8 bytes."""
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def clean(self):
        """The rules an import applies, for prompts added one at a time (the Django admin):
        text stripped, not empty, at most ``PROMPT_MAX_CHARS``, no NUL, and not a prompt the
        project has already (same ``text_sha256``, imported or added by hand).

        Raises:
            ValidationError: on ``text``, saying which rule failed.
        """
        self.text = (self.text or "").strip()
        if not self.text:
            raise ValidationError({"text": "A prompt needs some text."})
        if "\x00" in self.text:
            raise ValidationError({"text": "The text contains a NUL character."})
        if len(self.text) > PROMPT_MAX_CHARS:
            raise ValidationError({"text": f"The text is {len(self.text)} characters long; the limit is {PROMPT_MAX_CHARS}."})
        if self.project_id is not None:
            twin = Prompt.objects.filter(project_id=self.project_id, text_sha256=self.digest(self.text))
            if twin.exclude(pk=self.pk).exists():
                raise ValidationError({"text": "This project has this prompt already."})

    def save(self, *args, **kwargs):
        """``text_sha256`` always follows ``text`` (bulk imports set it themselves, see ``services.prompts_create``)."""
        self.text_sha256 = self.digest(self.text)
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and "text" in update_fields:
            kwargs["update_fields"] = {*update_fields, "text_sha256"}
        super().save(*args, **kwargs)


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
    n_ratings = models.PositiveSmallIntegerField(
        "ratings so far",
        default=0,
        help_text=(
            "Kept by the rating services (+1 per rating, -1 per undo) so the queue can skip finished items "
            "through an index; the queue still checks the real ratings and leases."
        ),
    )
    retired_at = models.DateTimeField(
        "retired",
        null=True,
        blank=True,
        help_text=(
            "Set when a newer version was served before this completion had all its ratings and the served "
            "version's first completions are ready (unless the project drains older versions), or when its "
            "version was a shadow candidate dropped unserved: kept with any ratings it has, never offered again. "
            "Cleared if its version is served again."
        ),
    )
    rank_group = models.ForeignKey(
        "RankGroup",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="members",
        help_text="Ranking mode: the group of completions of one prompt ranked together.",
    )
    rm_score = models.FloatField(
        "reward-model score", null=True, blank=True, help_text="Written by the rewards app: the ensemble's mean reward."
    )
    rm_uncertainty = models.FloatField(
        "reward-model uncertainty", null=True, blank=True, help_text="Written by the rewards app: the ensemble's spread."
    )

    class Source(models.TextChoices):
        POOL = "pool", "annotation pool"
        PRODUCTION = "production", "production (API)"

    source = models.CharField(
        "source", max_length=12, choices=Source.choices, default=Source.POOL,
        help_text="Sampled for the annotation pool, or answered to an API request (never offered to annotators).",
    )
    response_id = models.CharField(
        "response id", max_length=40, blank=True, default="",
        help_text="Production: the id the API answered with (chatcmpl-… or cmpl-…); feedback names it.",
    )
    choice_index = models.PositiveSmallIntegerField("choice", default=0, help_text="Production: index among n choices.")
    api_token = models.ForeignKey(
        "accounts.ApiToken", null=True, blank=True, on_delete=models.SET_NULL, related_name="completions",
        help_text="Production: the token that received this answer; only it may rate it.",
    )
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["project", "model_version"]),
            # The queue: open items of a version, the nearly finished first, oldest first.
            models.Index(fields=["project", "model_version", "-n_ratings", "id"], name="completion_queue_order"),
            # The progress line's count: open items of the project, every version.
            models.Index(fields=["project", "n_ratings"], name="completion_open_items"),
            # Items not retired: the queue offers older versions' ones too (after a serve, until the served
            # version's first batch), and the retired leftovers of every serve grow with the project's
            # history, so the queue, the progress count and the retiring walk only these rows.
            models.Index(
                fields=["project", "model_version", "-n_ratings", "id"],
                condition=models.Q(retired_at__isnull=True),
                name="completion_unretired",
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["response_id", "choice_index"], condition=~models.Q(response_id=""),
                name="completion_response_choice_unique",
            ),
        ]

    def __str__(self):
        return f"completion {self.pk} of {self.model_version}"


class PoolClaim(models.Model):
    """A prompt a generation worker is sampling for the pool right now.

    A refill claims the prompts of one generation batch in a short transaction
    (under a lock on the project row), samples them outside any transaction and
    deletes the claims in the transaction that stores the completions. Claims
    count toward the pool, so two workers refilling one project at once neither
    overshoot the target by more than one prompt group nor sample the same
    prompt for the same version: (prompt, model version) is unique here.
    A worker that dies leaves its claims until ``expires_at``.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="pool_claims")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="pool_claims")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="pool_claims")
    n_completions = models.PositiveSmallIntegerField(
        "completions", help_text="How many completions of the prompt this claim will add to the pool."
    )
    expires_at = models.DateTimeField("expires", help_text="After this a dead worker's claim no longer counts.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["prompt", "model_version"], name="pool_claim_once_per_prompt_version")
        ]
        indexes = [models.Index(fields=["project", "expires_at"], name="pool_claim_project_expiry")]

    def __str__(self):
        return f"claim on prompt {self.prompt_id} for {self.model_version}"


class ChosenBy(models.TextChoices):
    """Why the queue served an item (``Lease.chosen_by``)."""

    FIFO = "fifo", "Queue order (unfinished items first, then oldest)"
    UNIFORM = "uniform", "Drawn uniformly at random (active queue's unbiased share)"
    ACTIVE = "active", "Largest reward-model uncertainty (active queue)"
    GOLD = "gold", "Gold item (known answer, at the project's gold rate)"
    SHADOW = "shadow", "A waiting candidate version's completion (shadow queue)"


class Lease(models.Model):
    completion = models.ForeignKey(Completion, on_delete=models.CASCADE, related_name="leases")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="leases")
    slot = models.PositiveSmallIntegerField("slot", help_text="0 ≤ slot < the project's ratings per item.")
    expires_at = models.DateTimeField("expires")
    a_on_left = models.BooleanField(
        "A shown left",
        null=True,
        blank=True,
        help_text="Pairwise only: whether the pair's completion A is shown on the left (drawn at random per lease).",
    )
    fulfilled = models.BooleanField("rated", default=False, help_text="A fulfilled lease keeps its slot for good.")
    rating_mode = models.CharField(
        "rating mode",
        max_length=16,
        choices=RatingMode.choices,
        help_text=(
            "The project's rating mode when the item was leased. Once staff change the mode, an unrated lease "
            "of the old one is not shown again but given back, and an item of the new mode leased instead."
        ),
    )
    chosen_by = models.CharField(
        "chosen by",
        max_length=8,
        choices=ChosenBy.choices,
        default=ChosenBy.FIFO,
        help_text=(
            "Why the queue served this item: queue order, a uniform draw, the active queue's uncertainty, "
            "a gold check, or the shadow queue (a waiting candidate's completion)."
        ),
    )
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["expires_at"], condition=models.Q(fulfilled=False), name="lease_open_expiry"),
            models.Index(fields=["annotator", "fulfilled"], name="lease_annotator_open"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["completion", "slot"], name="lease_slot_unique"),
            models.UniqueConstraint(fields=["completion", "annotator"], name="lease_once_per_annotator"),
            # No default mode: a lease created without one would be another mode's, never shown.
            models.CheckConstraint(condition=models.Q(rating_mode__in=RatingMode.values), name="lease_rating_mode_known"),
        ]


class Skip(models.Model):
    completion = models.ForeignKey(Completion, on_delete=models.CASCADE, related_name="skips")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="skips")
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["completion", "annotator"], name="skip_once_per_annotator")]


class Pair(models.Model):
    """Two completions of the same prompt by the same version, compared side by side.

    ``completion_a`` is the anchor: leases, skips and the queue go through it.
    Which side each annotator saw on the left is recorded per comparison.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="pairs")
    completion_a = models.OneToOneField(Completion, on_delete=models.CASCADE, related_name="pair_as_a")
    completion_b = models.OneToOneField(Completion, on_delete=models.CASCADE, related_name="pair_as_b")
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(completion_a=models.F("completion_b")), name="pair_of_two_different_completions"
            ),
        ]

    def __str__(self):
        return f"pair {self.pk} ({self.completion_a_id} vs {self.completion_b_id})"


class Choice(models.TextChoices):
    A = "a", "A is better"
    B = "b", "B is better"
    TIE = "tie", "Tie"
    BOTH_BAD = "both_bad", "Both bad"


class Comparison(models.Model):
    """One annotator's decision on a pair.

    ``choice`` names the pair's completions (``a`` = ``completion_a``), not
    screen sides; ``a_on_left`` says what the annotator saw, so a left-side
    bias can be measured.
    """

    pair = models.ForeignKey(Pair, on_delete=models.CASCADE, related_name="comparisons")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="comparisons")
    choice = models.CharField("choice", max_length=8, choices=Choice.choices)
    a_on_left = models.BooleanField("A shown left", help_text="True when completion A was on the left of the screen.")
    comment = models.TextField("comment", blank=True, max_length=2000)
    seconds_spent = models.FloatField("seconds spent", null=True, blank=True)
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["annotator", "created_at"], name="comparison_annotator_time")]
        constraints = [
            models.UniqueConstraint(fields=["pair", "annotator"], name="comparison_once_per_annotator"),
            models.CheckConstraint(condition=models.Q(choice__in=Choice.values), name="comparison_choice_valid"),
        ]

    def __str__(self):
        return f"{self.annotator} on pair {self.pair_id}: {self.choice}"


class RankGroup(models.Model):
    """k completions of the same prompt by the same version, ranked together (ranking mode).

    ``anchor`` (one of the members) is what leases, skips and the queue go
    through; the members are the completions whose ``rank_group`` is this group.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="rank_groups")
    anchor = models.OneToOneField(Completion, on_delete=models.CASCADE, related_name="rank_group_as_anchor")
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self):
        return f"rank group {self.pk} (anchor {self.anchor_id})"


class Ranking(models.Model):
    """One annotator's order of a rank group's completions, best first.

    ``order`` lists completion ids from best to worst; ``shown_order`` the order
    they were shown in (top to bottom), so a position bias can be measured.
    """

    group = models.ForeignKey(RankGroup, on_delete=models.CASCADE, related_name="rankings")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="rankings")
    order = models.JSONField("order", help_text="Completion ids, best first.")
    shown_order = models.JSONField("shown order", default=list, blank=True, help_text="Completion ids as shown, top first.")
    comment = models.TextField("comment", blank=True, max_length=2000)
    seconds_spent = models.FloatField("seconds spent", null=True, blank=True)
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["annotator", "created_at"], name="ranking_annotator_time")]
        constraints = [models.UniqueConstraint(fields=["group", "annotator"], name="ranking_once_per_annotator")]

    def __str__(self):
        return f"{self.annotator} ranked group {self.group_id}: {self.order}"


class RankedPair(models.Model):
    """One pairwise comparison a ranking implies: ``winner`` was ranked above ``loser``."""

    ranking = models.ForeignKey(Ranking, on_delete=models.CASCADE, related_name="pairs")
    winner = models.ForeignKey(Completion, on_delete=models.CASCADE, related_name="ranked_wins")
    loser = models.ForeignKey(Completion, on_delete=models.CASCADE, related_name="ranked_losses")

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["ranking", "winner", "loser"], name="ranked_pair_once"),
            models.CheckConstraint(condition=~models.Q(winner=models.F("loser")), name="ranked_pair_two_completions"),
        ]


class Rating(models.Model):
    """One annotator's judgment of one completion.

    Exactly one of ``score`` (Likert 1–5), ``thumbs_up``, ``comparison``
    (this completion's side of a pairwise decision), ``ranking`` (with this
    completion's ``rank`` in it, 0 = best) or ``criteria`` (rubric scores, with
    the weights of the rubric they were given under) is set. So a rating keeps
    its own kind when the project's mode or rubric changes later.
    """

    completion = models.ForeignKey(Completion, on_delete=models.CASCADE, related_name="ratings")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="ratings")
    score = models.SmallIntegerField("score", null=True, blank=True, help_text="Likert 1–5.")
    thumbs_up = models.BooleanField("thumbs up", null=True, blank=True, help_text="Thumbs mode: up (True) or down.")
    comparison = models.ForeignKey(
        Comparison,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="ratings",
        help_text="Pairwise mode: the decision this rating is one side of.",
    )
    ranking = models.ForeignKey(
        Ranking,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="ratings",
        help_text="Ranking mode: the ranking this rating is one place of.",
    )
    rank = models.PositiveSmallIntegerField(
        "rank", null=True, blank=True, help_text="Ranking mode: this completion's place, 0 = best."
    )
    criteria = models.JSONField(
        "rubric scores",
        null=True,
        blank=True,
        help_text='Rubric mode: [{"name", "weight", "score" 1–5}] per criterion, with the weights it was given under.',
    )
    comment = models.TextField("comment", blank=True, max_length=2000)
    seconds_spent = models.FloatField("seconds spent", null=True, blank=True)

    class Source(models.TextChoices):
        ANNOTATOR = "annotator", "annotator"
        PRODUCTION = "production", "production feedback"

    source = models.CharField(
        "source", max_length=12, choices=Source.choices, default=Source.ANNOTATOR,
        help_text="An annotator's judgment, or feedback from the user of a production answer (weighted per project).",
    )
    created_at = models.DateTimeField("created", auto_now_add=True)
    updated_at = models.DateTimeField("updated", auto_now=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["annotator", "created_at"], name="rating_annotator_time")]
        constraints = [
            models.UniqueConstraint(fields=["completion", "annotator"], name="rating_once_per_annotator"),
            models.CheckConstraint(
                condition=models.Q(score__isnull=True) | models.Q(score__gte=1, score__lte=5),
                name="rating_score_1_to_5",
            ),
            models.CheckConstraint(
                condition=(
                    models.Q(score__isnull=False, thumbs_up__isnull=True, comparison__isnull=True, ranking__isnull=True, criteria__isnull=True)
                    | models.Q(score__isnull=True, thumbs_up__isnull=False, comparison__isnull=True, ranking__isnull=True, criteria__isnull=True)
                    | models.Q(score__isnull=True, thumbs_up__isnull=True, comparison__isnull=False, ranking__isnull=True, criteria__isnull=True)
                    | models.Q(score__isnull=True, thumbs_up__isnull=True, comparison__isnull=True, ranking__isnull=False, criteria__isnull=True)
                    | models.Q(score__isnull=True, thumbs_up__isnull=True, comparison__isnull=True, ranking__isnull=True, criteria__isnull=False)
                ),
                name="rating_exactly_one_of_five_kinds",
            ),
            models.CheckConstraint(
                condition=models.Q(ranking__isnull=True, rank__isnull=True)
                | models.Q(ranking__isnull=False, rank__isnull=False),
                name="rating_rank_with_ranking",
            ),
        ]

    def __str__(self):
        return f"{self.annotator} rated {self.completion_id}: {self.value_label}"

    @property
    def value_label(self) -> str:
        return self.label_of(score=self.score, thumbs_up=self.thumbs_up, rank=self.rank, criteria=self.criteria)

    @staticmethod
    def label_of(*, score=None, thumbs_up=None, rank=None, criteria=None) -> str:
        """A rating's value as a person reads it ("4", "thumbs down", "ranked 2", "helpful 5, fluent 3");
        also labels an undone rating's :class:`RatingRevision`, which keeps the same fields."""
        if score is not None:
            return str(score)
        if thumbs_up is not None:
            return "thumbs up" if thumbs_up else "thumbs down"
        if rank is not None:
            return f"ranked {rank + 1}"
        if criteria is not None:
            return ", ".join(f"{c['name']} {c['score']}" for c in criteria)
        return "pairwise"


class GoldItem(models.Model):
    """An item with a known answer, mixed into annotators' queues to measure their accuracy.

    ``completion`` is the item as the queue knows it: a completion (Likert,
    thumbs), a pair's completion A (pairwise) or a rank group's anchor
    (ranking). ``answer`` is what counts as right, by kind (see
    :func:`webapp.annotation.judgments.gold_answer_clean`). Gold items are never
    offered by the ordinary queue and never trained on; their judgments are
    stored as ordinary ratings. Changing an answer goes through
    ``services.gold_item_set``, which records the change in the audit log.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="gold_items")
    completion = models.OneToOneField(Completion, on_delete=models.CASCADE, related_name="gold")
    answer = models.JSONField("known answer")
    note = models.TextField("note", blank=True, help_text="Why this is the answer (for staff).")
    created_at = models.DateTimeField("created", auto_now_add=True)
    updated_at = models.DateTimeField("updated", auto_now=True)

    class Meta:
        ordering = ["id"]

    def __str__(self):
        return f"gold item {self.completion_id}: {self.answer}"


class RatingRevision(models.Model):
    """What a judgment was before it was undone: history, so nothing is ever lost.

    One row per undo. ``completion`` is the rated completion (the pair's
    anchor for pairwise); the value fields copy the undone judgment.
    """

    class Action(models.TextChoices):
        UNDONE = "undone", "Undone"

    completion = models.ForeignKey(Completion, on_delete=models.CASCADE, related_name="revisions")
    pair = models.ForeignKey(Pair, null=True, blank=True, on_delete=models.CASCADE, related_name="revisions")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="rating_revisions")
    action = models.CharField("action", max_length=16, choices=Action.choices, default=Action.UNDONE)
    score = models.SmallIntegerField("score", null=True, blank=True)
    thumbs_up = models.BooleanField("thumbs up", null=True, blank=True)
    choice = models.CharField("choice", max_length=8, blank=True, choices=Choice.choices)
    a_on_left = models.BooleanField("A shown left", null=True, blank=True)
    order = models.JSONField("ranking order", null=True, blank=True, help_text="Ranking mode: completion ids, best first.")
    criteria = models.JSONField("rubric scores", null=True, blank=True, help_text="Rubric mode: as on the rating.")
    comment = models.TextField("comment", blank=True)
    seconds_spent = models.FloatField("seconds spent", null=True, blank=True)
    rated_at = models.DateTimeField("rated")
    revised_at = models.DateTimeField("revised", auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self):
        return f"{self.annotator} {self.action} a judgment of {self.completion_id}"


class Feedback(models.Model):
    """One ``POST /api/v1/feedback`` as it was received: the record of production feedback.

    A thumb, a score or a preference also becomes a :class:`Rating` (``source`` production)
    of the completion; a comment alone lives only here. Nothing a user sent is dropped: a
    judgment the sender replaced or deleted keeps its row, with ``withdrawn_at`` set and no
    rating.
    """

    class Kind(models.TextChoices):
        THUMBS = "thumbs", "thumbs"
        LIKERT = "likert", "Likert score"
        PAIRWISE = "pairwise", "pairwise preference"
        COMMENT = "comment", "comment"

    completion = models.ForeignKey(Completion, on_delete=models.CASCADE, related_name="feedback")
    other = models.ForeignKey(
        Completion, null=True, blank=True, on_delete=models.CASCADE, related_name="feedback_as_other",
        help_text="Pairwise: the answer the completion was preferred to.",
    )
    api_token = models.ForeignKey("accounts.ApiToken", on_delete=models.PROTECT, related_name="feedback")
    kind = models.CharField("kind", max_length=10, choices=Kind.choices)
    score = models.SmallIntegerField("score", null=True, blank=True)
    thumbs_up = models.BooleanField("thumbs up", null=True, blank=True)
    comment = models.TextField("comment", blank=True, max_length=2000)
    rating = models.ForeignKey(Rating, null=True, blank=True, on_delete=models.SET_NULL, related_name="feedback")
    created_at = models.DateTimeField("received", auto_now_add=True)
    withdrawn_at = models.DateTimeField(
        "withdrawn", null=True, blank=True,
        help_text="When the sender replaced or deleted this judgment; its rating is gone, this record stays.",
    )

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "feedback"

    def __str__(self):
        return f"{self.kind} feedback on {self.completion_id}"
