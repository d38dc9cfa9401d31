from django.contrib import admin

from .models import ModelVersion, Project


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["slug", "title", "rating_mode", "served_version", "min_new_ratings", "pool_target"]


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["project", "number", "kind", "parent", "ratings_used", "created_at"]
    list_filter = ["project"]
