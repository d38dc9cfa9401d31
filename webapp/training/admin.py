from django.contrib import admin

from .models import TrainingRun, TrainingStep, VersionSample


class TrainingStepInline(admin.TabularInline):
    """A run's steps, read-only: only the workers change them."""

    model = TrainingStep
    fields = ["name", "status", "attempts", "worker", "started_at", "finished_at", "error"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "status", "trigger", "parent_version", "result_version", "promoted", "created_at"]
    list_filter = ["project", "status"]
    readonly_fields = ["ratings", "curve"]
    inlines = [TrainingStepInline]


@admin.register(VersionSample)
class VersionSampleAdmin(admin.ModelAdmin):
    list_display = ["version", "prompt", "finished", "created_at"]
    list_filter = ["version__project"]
    raw_id_fields = ["prompt"]
