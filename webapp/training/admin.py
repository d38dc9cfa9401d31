from django.contrib import admin

from .models import TrainingRun, VersionSample


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "status", "trigger", "parent_version", "result_version", "promoted", "created_at"]
    list_filter = ["project", "status"]
    readonly_fields = ["ratings", "curve"]


@admin.register(VersionSample)
class VersionSampleAdmin(admin.ModelAdmin):
    list_display = ["version", "prompt", "finished", "created_at"]
    list_filter = ["version__project"]
    raw_id_fields = ["prompt"]
