from django.contrib import admin
from django.contrib.auth import admin as auth_admin
from django.contrib.auth.models import User

from webapp.policies.selectors import projects_only_staffed_by

from .models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are created by their users (page or command); here they can be seen and revoked, never read."""

    list_display = ["prefix", "name", "user", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["user__username", "name", "prefix"]
    readonly_fields = ["user", "name", "prefix", "created_at", "last_used_at"]

    def has_add_permission(self, request):
        return False


class UserChangeForm(auth_admin.UserChangeForm):
    """Django's user form, refusing to deactivate the last active staff member of a project: the same rule
    as demoting or removing them (``policies.services.membership_add``/``membership_remove``), read with
    :func:`webapp.policies.selectors.projects_only_staffed_by`."""

    def clean(self):
        cleaned = super().clean()
        deactivating = self.instance.pk and self.initial.get("is_active") and cleaned.get("is_active") is False
        if deactivating:
            stranded = [project.slug for project in projects_only_staffed_by(user=self.instance)]
            if stranded:
                self.add_error("is_active", (
                    f"{self.instance.username} is the last active staff member of {', '.join(stranded)} and cannot be "
                    "deactivated: make someone else staff there first (the project's setup page), so that someone "
                    "can still manage it."
                ))  # fmt: skip
        return cleaned


admin.site.unregister(User)


@admin.register(User)
class UserAdmin(auth_admin.UserAdmin):
    """Django's user admin with :class:`UserChangeForm`."""

    form = UserChangeForm
