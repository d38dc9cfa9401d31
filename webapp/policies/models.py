"""Projects and their model versions.

A project is one policy lineage: a base model, the versions trained from it,
its prompts and ratings (in ``annotation``) and its training runs (in
``training``). Exactly one version per project is *served*: the one whose
completions annotators rate next.
"""

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class RatingMode(models.TextChoices):
    LIKERT = "likert", "Likert 1–5"
    THUMBS = "thumbs", "Thumbs up/down"
    PAIRWISE = "pairwise", "Pairwise A/B"


class Project(models.Model):
    slug = models.SlugField("slug", unique=True, help_text="Short name used in URLs and commands.")
    title = models.CharField("title", max_length=200)
    base_model_path = models.CharField(
        "base model folder",
        max_length=500,
        help_text="Local Hugging Face causal-LM folder the lineage starts from.",
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
    min_new_ratings = models.PositiveIntegerField(
        "ratings per training run",
        default=16,
        validators=[MinValueValidator(1)],
        help_text="A scheduled run starts once at least this many unused ratings exist.",
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
    served_version = models.ForeignKey(
        "ModelVersion",
        verbose_name="served version",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The version whose completions annotators rate.",
    )
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        ordering = ["slug"]
        constraints = [
            models.CheckConstraint(condition=models.Q(ratings_per_item__gte=1), name="project_ratings_per_item_gte_1"),
        ]

    def __str__(self):
        return self.slug


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
        help_text="The base model folder for version 0, otherwise this version's own folder.",
    )
    sha256 = models.CharField("weights sha256", max_length=64, blank=True)
    ratings_used = models.PositiveIntegerField("ratings used", default=0)
    metrics = models.JSONField("metrics", default=dict, blank=True)
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        ordering = ["project", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["project", "number"], name="version_number_unique_per_project"),
        ]

    def __str__(self):
        return f"{self.project.slug} v{self.number}"
