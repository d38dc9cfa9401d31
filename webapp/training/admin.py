from django.contrib import admin

from .models import TrainingRun


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "status", "trigger", "parent_version", "result_version", "created_at"]
    list_filter = ["project", "status"]
    readonly_fields = ["ratings"]
