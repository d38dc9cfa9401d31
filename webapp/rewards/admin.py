from django.contrib import admin

from .models import RewardModelVersion


@admin.register(RewardModelVersion)
class RewardModelVersionAdmin(admin.ModelAdmin):
    list_display = ["project", "number", "n_judgments", "n_ratings", "created_at"]
    list_filter = ["project"]
    readonly_fields = ["rating_ids", "rating_ids_sha256", "metrics", "config", "artefact_path", "sha256"]
