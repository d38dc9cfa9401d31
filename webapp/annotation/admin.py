from django.contrib import admin

from .models import Completion, Lease, Prompt, Rating


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "source", "held_out", "created_at"]
    list_filter = ["project", "held_out"]
    search_fields = ["text", "source"]


@admin.register(Completion)
class CompletionAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "model_version", "finished", "created_at"]
    list_filter = ["project", "finished"]
    raw_id_fields = ["prompt", "model_version"]


@admin.register(Rating)
class RatingAdmin(admin.ModelAdmin):
    list_display = ["id", "completion", "annotator", "score", "created_at"]
    list_filter = ["annotator"]
    raw_id_fields = ["completion"]


@admin.register(Lease)
class LeaseAdmin(admin.ModelAdmin):
    list_display = ["id", "completion", "annotator", "slot", "expires_at", "fulfilled"]
