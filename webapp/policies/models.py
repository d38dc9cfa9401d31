"""Projects and their model versions.

A project is one policy lineage: a base model, the versions trained from it,
its prompts and ratings (in ``annotation``) and its training runs (in
``training``). Exactly one version per project is *served*: the one whose
completions annotators rate next.
"""

import unicodedata

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class RatingMode(models.TextChoices):
    LIKERT = "likert", "Likert 1–5"
    THUMBS = "thumbs", "Thumbs up/down"
    PAIRWISE = "pairwise", "Pairwise A/B"
    RANKING = "ranking", "Rank k outputs"
    RUBRIC = "rubric", "Rubric: named criteria 1–5"

RUBRIC_MAX_CRITERIA = 8


RUBRIC_MIN_WEIGHT = 0.01


def rubric_check(rubric) -> list[dict]:
    """A rubric checked and normalised: 1 to ``RUBRIC_MAX_CRITERIA`` criteria, each
    ``{"name": text (1–60 characters, unique, no control character: no line break or tab), "weight": number
    from ``RUBRIC_MIN_WEIGHT`` (0.01: smaller would make the criterion vanish from the reward) to 1000,
    "description": text (no control character either)}``.

    Raises:
        ValidationError: what is wrong, on ``rubric``.
    """
    from django.core.exceptions import ValidationError

    if not isinstance(rubric, list) or not 1 <= len(rubric) <= RUBRIC_MAX_CRITERIA:
        raise ValidationError({"rubric": f"A rubric is a list of 1 to {RUBRIC_MAX_CRITERIA} criteria."})
    out, names = [], set()
    for i, criterion in enumerate(rubric, 1):
        if not isinstance(criterion, dict) or not set(criterion) <= {"name", "weight", "description"}:
            raise ValidationError({"rubric": f"Criterion {i} must be {{\"name\", \"weight\", \"description\"}}."})
        name = str(criterion.get("name", "")).strip()
        weight = criterion.get("weight", 1)
        if not 1 <= len(name) <= 60:
            raise ValidationError({"rubric": f"Criterion {i} needs a name of 1 to 60 characters."})
        # The rate form posts each name back in a hidden field, and browsers send its line breaks as
        # CRLF: a name with one would never match again, and nobody could rate the project.
        _one_line_check(i, "name", name)
        if name in names:
            raise ValidationError({"rubric": f"Criterion {i}'s name ({name}) is taken by another criterion; names must be unique."})
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not RUBRIC_MIN_WEIGHT <= weight <= 1000:
            raise ValidationError({"rubric": f"Criterion {i} ({name}) needs a weight from {RUBRIC_MIN_WEIGHT} to 1000."})
        description = str(criterion.get("description", ""))
        _one_line_check(i, "description", description)  # shown on one line beside the name, as the name
        names.add(name)
        out.append({"name": name, "weight": float(weight), "description": description})
    return out


def _one_line_check(i: int, field: str, text: str) -> None:
    """Refuse criterion ``i``'s ``field`` ("name", "description") when ``text`` holds a control character
    (Unicode category Cc: a line break, tab, NUL or similar).

    Raises:
        ValidationError: which criterion and field, on ``rubric``.
    """
    from django.core.exceptions import ValidationError

    if any(unicodedata.category(char) == "Cc" for char in text):
        raise ValidationError({"rubric": (
            f"Criterion {i}'s {field} ({text!r}) contains a control character (a line break, tab or similar);"
            f" a {field} is one line of text."
        )})  # fmt: skip


class RewardSource(models.TextChoices):
    HUMAN = "human", "Human ratings only"
    REWARD_MODEL = "reward_model", "Reward model (fresh samples, scored)"


class ArenaVoters(models.TextChoices):
    STAFF = "staff", "Staff only"
    MEMBERS = "members", "Staff and annotators"


class Project(models.Model):
    slug = models.SlugField("slug", unique=True, help_text="Short name used in URLs and commands.")
    title = models.CharField("title", max_length=200)
    base_model_path = models.CharField(
        "base model folder",
        max_length=500,
        help_text=(
            "Hugging Face causal-LM folder the lineage starts from: its name under REWARDLOOP_MODELS_DIR, "
            "which each machine resolves under its own models folder, or an absolute path outside it."
        ),
    )
    rating_mode = models.CharField("rating mode", max_length=16, choices=RatingMode.choices, default=RatingMode.LIKERT)
    guidelines = models.TextField("guidelines", blank=True, help_text="Shown to annotators (Markdown).")
    ratings_per_item = models.PositiveSmallIntegerField(
        "ratings per item",
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(10)],
        help_text="How many distinct annotators rate each completion.",
    )
    pool_target = models.PositiveIntegerField(
        "pool size",
        default=32,
        validators=[MinValueValidator(1), MaxValueValidator(1000)],
        help_text="Unrated completions kept ready from the served version.",
    )
    pool_low_water = models.PositiveIntegerField(
        "pool low-water mark",
        default=16,
        validators=[MaxValueValidator(1000)],
        help_text=(
            "Refill the pool as soon as fewer unrated completions than this are ready (capped at the pool size). "
            "Set it above what annotators rate while one generation batch is sampled, so nobody waits."
        ),
    )
    drain_old_versions = models.BooleanField(
        "drain older versions",
        default=False,
        help_text=(
            "Off (the default): once a newly served version's first completions are ready, older versions' "
            "unrated completions are retired (kept, never offered); until then they are offered after the served "
            "version's. On: they stay in the queue for good, after the served version's."
        ),
    )
    rank_k = models.PositiveSmallIntegerField(
        "outputs per ranking",
        default=3,
        validators=[MinValueValidator(2), MaxValueValidator(6)],
        help_text=(
            "Ranking mode: how many completions of one prompt an annotator orders from best to worst (2–6). "
            "A ranking is stored as the k(k-1)/2 pairwise comparisons it implies."
        ),
    )
    production_feedback_weight = models.FloatField(
        "production feedback weight",
        default=1.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(10.0)],
        help_text=(
            "How much a rating from production feedback (POST /api/v1/feedback) counts in training, against 1 for "
            "an annotator's: it scales the advantage of each completion by the mean weight of its ratings, and "
            "each judgment's term in the reward model's loss. "
            "0: production feedback is stored and exported but trains neither the policy nor the reward model."
        ),
    )
    rubric = models.JSONField(
        "rubric",
        default=list,
        blank=True,
        help_text=(
            'Rubric mode: the criteria, each scored 1–5, e.g. [{"name": "helpful", "weight": 2, "description": "..."}, '
            '{"name": "fluent", "weight": 1}]. Reward = weighted mean of (score - 3) / 2. Changing it keeps earlier '
            "ratings with the rubric they were given under."
        ),
    )
    gold_rate = models.FloatField(
        "gold item rate",
        default=0.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text=(
            "Share of the cards an annotator is shown that are gold items (known answers), drawn at random "
            "while one they have not answered is left. 0 turns gold checks off."
        ),
    )
    gold_min_accuracy = models.FloatField(
        "gold: lowest accuracy trusted in full",
        default=0.7,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Annotators whose gold accuracy is below this have their ratings down-weighted in training.",
    )
    gold_min_answers = models.PositiveSmallIntegerField(
        "gold: answers before accuracy counts",
        default=5,
        validators=[MinValueValidator(1), MaxValueValidator(1000)],
        help_text="An annotator's gold accuracy decides their weight only once they answered this many gold items (1–1000).",
    )
    gold_low_weight = models.FloatField(
        "gold: weight of a low-accuracy annotator",
        default=0.25,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Weight (0–1) of the ratings of annotators below the accuracy; 1 ignores gold accuracy in training.",
    )
    completions_per_prompt = models.PositiveSmallIntegerField(
        "completions per prompt",
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(8)],
        help_text=(
            "Likert and thumbs modes: completions sampled from each prompt at once. With 2 or more the "
            "update's leave-one-out baseline compares completions of the same prompt (Kool et al. 2019); "
            "with 1 it compares against the rest of the batch. Pairwise mode always samples two, ranking mode k (outputs per ranking)."
        ),
    )
    min_new_ratings = models.PositiveIntegerField(
        "ratings per training run",
        default=16,
        validators=[MinValueValidator(1), MaxValueValidator(100_000)],
        help_text="A scheduled run starts once at least this many unused ratings exist (1–100,000).",
    )
    max_new_tokens = models.PositiveIntegerField(
        "completion length (tokens)", default=96, validators=[MinValueValidator(1), MaxValueValidator(1024)]
    )
    pg_config = models.JSONField(
        "policy-gradient settings",
        default=dict,
        blank=True,
        help_text="Overrides of pgcore.PGConfig fields for this project's runs.",
    )
    guard_max_kl = models.FloatField(
        "promotion guard: highest KL to the base",
        default=0.5,
        validators=[MinValueValidator(0.0), MaxValueValidator(1000.0)],
        help_text=(
            "Nats per token on held-out prompts (0–1000); a new version above this is kept but not served. "
            "A few nats already lets every version through."
        ),
    )
    guard_min_distinct2_ratio = models.FloatField(
        "promotion guard: lowest distinct-2, as a fraction of the parent's",
        default=0.5,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="A new version whose distinct-2 falls below this fraction of its parent's is not served.",
    )
    guard_max_identical_fraction = models.FloatField(
        "promotion guard: highest share of identical outputs",
        default=0.5,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="A new version is not served when more than this share of its held-out outputs are the same text.",
    )
    guard_eval_prompts = models.PositiveIntegerField(
        "held-out prompts per evaluation",
        default=16,
        validators=[MinValueValidator(1), MaxValueValidator(256)],
        help_text="How many held-out prompts each new version completes for the guard and comparisons.",
    )
    reward_source = models.CharField(
        "reward source",
        max_length=16,
        choices=RewardSource.choices,
        default=RewardSource.HUMAN,
        help_text=(
            "Human ratings only: each run trains on the completions people rated. Reward model: each run also "
            "samples fresh completions and scores them with the latest reward model fitted on every rating "
            "(falls back to human ratings alone while too few ratings exist to fit one)."
        ),
    )
    active_queue = models.BooleanField(
        "active queue",
        default=False,
        help_text=(
            "Offer first the completions the reward model is least sure about (largest ensemble spread), "
            "keeping a share drawn at random so the ratings still measure the model without bias."
        ),
    )
    active_uniform_share = models.FloatField(
        "active queue: share drawn at random",
        default=0.25,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Share of served items drawn uniformly at random while the active queue is on.",
    )
    shadow_share = models.FloatField(
        "shadow queue: share of a candidate's items",
        default=0.1,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text=(
            "While a version trained with the reward model waits for people's ratings (the over-optimisation "
            "guard compares them with what the reward model predicts), this share of the items served are its "
            "completions, blind: the card does not say so. 0 disables the shadow queue, and such a version is "
            "then served without people's ratings of it."
        ),
    )
    rm_pessimism = models.FloatField(
        "reward model: pessimism",
        default=1.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(10.0)],
        help_text="c in the reward mean − c·std of the ensemble: how much its uncertainty lowers a score.",
    )
    rm_samples_per_prompt = models.PositiveSmallIntegerField(
        "reward model: samples per prompt",
        default=4,
        validators=[MinValueValidator(2), MaxValueValidator(16)],
        help_text="Fresh completions sampled per prompt for a reward-model update (leave-one-out baseline in each group).",
    )
    rm_trust = models.BooleanField(
        "reward model: weigh its samples by its accuracy",
        default=False,
        help_text=(
            "Each update weighs the fresh samples by how often the reward model orders two held-out ratings right "
            "(cross-validated over every rating, lower confidence bound): nothing at chance (0.5), fully from 0.8. "
            "While it is not above chance the run trains on human ratings alone and samples nothing."
        ),
    )
    arena_voters = models.CharField(
        "who votes in the arena",
        max_length=8,
        choices=ArenaVoters.choices,
        default=ArenaVoters.STAFF,
        help_text="Who may vote in the blind version arena: the project's staff, or its annotators too.",
    )
    arena_required = models.BooleanField(
        "promotion guard: must win the arena",
        default=False,
        help_text=(
            "On: a version newer than the served one is served only once it beats the served version in the "
            "blind arena (a run's new version waits unserved for the votes); rolling back to an older version "
            "is never held up. “Serve anyway” overrides it, audited."
        ),
    )
    arena_min_votes = models.PositiveIntegerField(
        "promotion guard: arena votes needed",
        default=20,
        validators=[MinValueValidator(1), MaxValueValidator(10000)],
        help_text="Votes comparing the candidate with the served version directly before the arena can say it won.",
    )
    served_version = models.ForeignKey(
        "ModelVersion",
        verbose_name="served version",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The version whose completions annotators rate.",
    )
    shadow_version = models.ForeignKey(
        "ModelVersion",
        verbose_name="shadow candidate",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text=(
            "A candidate version waiting for people's ratings: the shadow queue mixes its completions into the "
            "queue (Project.shadow_share). Set and cleared by the training worker's promotion guard."
        ),
    )
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        ordering = ["slug"]
        constraints = [
            models.CheckConstraint(condition=models.Q(ratings_per_item__gte=1), name="project_ratings_per_item_gte_1"),
            models.CheckConstraint(
                condition=models.Q(completions_per_prompt__gte=1, completions_per_prompt__lte=8),
                name="project_completions_per_prompt_1_to_8",
            ),
            models.CheckConstraint(condition=models.Q(rank_k__gte=2, rank_k__lte=6), name="project_rank_k_2_to_6"),
            models.CheckConstraint(
                condition=models.Q(gold_rate__gte=0, gold_rate__lte=1, gold_min_accuracy__gte=0, gold_min_accuracy__lte=1)
                & models.Q(gold_low_weight__gte=0, gold_low_weight__lte=1),
                name="project_gold_settings_0_to_1",
            ),
            models.CheckConstraint(condition=models.Q(guard_max_kl__gte=0), name="project_guard_max_kl_gte_0"),
            models.CheckConstraint(
                condition=models.Q(active_uniform_share__gte=0, active_uniform_share__lte=1),
                name="project_active_uniform_share_0_to_1",
            ),
            models.CheckConstraint(condition=models.Q(rm_pessimism__gte=0), name="project_rm_pessimism_gte_0"),
            models.CheckConstraint(
                condition=models.Q(shadow_share__gte=0, shadow_share__lte=1), name="project_shadow_share_0_to_1"
            ),
            models.CheckConstraint(
                condition=models.Q(guard_min_distinct2_ratio__gte=0, guard_min_distinct2_ratio__lte=1),
                name="project_guard_distinct2_ratio_0_to_1",
            ),
            models.CheckConstraint(
                condition=models.Q(guard_max_identical_fraction__gte=0, guard_max_identical_fraction__lte=1),
                name="project_guard_identical_fraction_0_to_1",
            ),
        ]

    def __str__(self):
        return self.slug

    def clean(self):
        """A rubric-mode project needs a valid rubric (:func:`rubric_check`); a given rubric is normalised."""
        if self.rubric or self.rating_mode == RatingMode.RUBRIC:
            self.rubric = rubric_check(self.rubric)


class ModelVersion(models.Model):
    class Kind(models.TextChoices):
        BASE = "base", "Base model"
        LORA = "lora", "LoRA adapter on the base"
        FULL = "full", "Full weights"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField("version", help_text="0 is the base model.")
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children", verbose_name="parent"
    )
    kind = models.CharField("kind", max_length=8, choices=Kind.choices)
    weights_path = models.CharField(
        "weights folder",
        max_length=500,
        help_text=(
            "Version 0: the base model folder (its name under REWARDLOOP_MODELS_DIR, or an absolute path). "
            "Otherwise this version's own folder: its name in the models storage (<project>/run-N), which each "
            "machine resolves in its own models folder or cache, or an absolute path recorded before names were portable."
        ),
    )
    sha256 = models.CharField("weights sha256", max_length=64, blank=True)
    ratings_used = models.PositiveIntegerField("ratings used", default=0)
    metrics = models.JSONField("metrics", default=dict, blank=True, help_text="Training metrics of the run that made it.")
    kl_to_base = models.FloatField(
        "KL to the base", null=True, blank=True, help_text="k3 estimate, nats per token, on its held-out completions."
    )
    distinct2 = models.FloatField(
        "distinct-2", null=True, blank=True, help_text="Distinct token bigrams / all bigrams of its held-out completions."
    )
    identical_fraction = models.FloatField(
        "identical outputs", null=True, blank=True, help_text="Largest share of its held-out completions with one same text."
    )
    evaluated_at = models.DateTimeField("evaluated", null=True, blank=True)
    held_back_reason = models.TextField(
        "why it was not served", blank=True, help_text="Set when the promotion guard kept the version from being served."
    )
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        ordering = ["project", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["project", "number"], name="version_number_unique_per_project"),
        ]

    def __str__(self):
        return f"{self.project.slug} v{self.number}"


class VersionExport(models.Model):
    """A model version written as a zipped Hugging Face folder (LoRA merged), for download.

    Built by a task on the training worker, never in a web request (loading and merging a
    model takes seconds to minutes). Versions never change, so one finished export per
    version is kept and served again; a failed one keeps its error and can be retried.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        BUILDING = "building", "Building"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="exports")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField("status", max_length=8, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField("error", blank=True)
    archive_path = models.CharField("archive", max_length=500, blank=True, help_text="The zip file, once ready.")
    size_bytes = models.BigIntegerField("size (bytes)", null=True, blank=True)
    created_at = models.DateTimeField("requested", auto_now_add=True)
    finished_at = models.DateTimeField("finished", null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"export {self.pk} of {self.version} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in (self.Status.QUEUED, self.Status.BUILDING)


class AuditEvent(models.Model):
    """Who changed what, when: training, cancelling, promoting, exporting, settings, members."""

    class Action(models.TextChoices):
        TRAIN = "train", "Started a training run"
        CANCEL = "cancel", "Cancelled a training run"
        PROMOTE = "promote", "Served a version"
        EXPORT_VERSION = "export_version", "Exported a version"
        EXPORT_RATINGS = "export_ratings", "Exported ratings"
        SETTINGS = "settings", "Changed project settings"
        MEMBER_ADD = "member_add", "Added a member"
        MEMBER_REMOVE = "member_remove", "Removed a member"
        GOLD_SET = "gold_set", "Set a gold item's answer"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="audit_events")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Empty when the system acted (the schedule, a command without a user).",
    )
    action = models.CharField("action", max_length=32, choices=Action.choices)
    target = models.CharField("target", max_length=200, help_text="What was acted on, e.g. 'run 12' or 'v3'.")
    version = models.ForeignKey(
        ModelVersion,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="audit_events",
        verbose_name="model version",
        help_text="The version the event concerns (serving, exporting), else empty; the target text still names it "
        "if the version is deleted.",
    )
    detail = models.JSONField("detail", default=dict, blank=True)
    created_at = models.DateTimeField("when", auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"{self.actor or 'system'} {self.action} {self.target}"


class Membership(models.Model):
    """Who may work on a project, and as what.

    Annotators rate the project's items; staff also see its training runs,
    versions, figures and audit log and may train, promote and export.
    Global staff users (``User.is_staff``) count as staff of every project
    (they can reach the Django admin anyway); everyone else reaches only the
    projects they are members of.
    """

    class Role(models.TextChoices):
        ANNOTATOR = "annotator", "Annotator"
        STAFF = "staff", "Staff"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField("role", max_length=16, choices=Role.choices, default=Role.ANNOTATOR)
    created_at = models.DateTimeField("added", auto_now_add=True)

    class Meta:
        ordering = ["project", "user"]
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="membership_once_per_project"),
            models.CheckConstraint(condition=models.Q(role__in=["annotator", "staff"]), name="membership_role_known"),
        ]

    def __str__(self):
        return f"{self.user} in {self.project} as {self.role}"
