from django.contrib import admin

from .models import AuditEvent, Membership, ModelVersion, Project


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["slug", "title", "rating_mode", "served_version", "min_new_ratings", "pool_target", "guard_max_kl"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    """Who may annotate (annotator) or run training (staff) in which project."""

    list_display = ["project", "user", "role", "created_at"]
    list_filter = ["project", "role"]
    search_fields = ["user__username", "project__slug"]
    autocomplete_fields = ["user"]


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["project", "number", "kind", "parent", "ratings_used", "kl_to_base", "distinct2", "created_at"]
    list_filter = ["project"]


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the audit log is history, never edited."""

    list_display = ["created_at", "project", "actor", "action", "target"]
    list_filter = ["project", "action"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
