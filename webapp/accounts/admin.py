from django.contrib import admin
from django.contrib.auth import admin as auth_admin
from django.contrib.auth.models import User

from webapp.errors import ApplicationError
from webapp.policies.services import user_deactivation_check

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
    as demoting or removing them (``policies.services.membership_add``/``membership_remove``), checked by
    :func:`webapp.policies.services.user_deactivation_check` with the same lock on the projects' rows.

    The admin's change view (``ModelAdmin.changeform_view``) validates this form and saves the user in one
    transaction, so the lock taken here holds until the deactivation is committed; outside a transaction
    the lock fails on PostgreSQL (``TransactionManagementError``) rather than check without it.
    """

    def clean(self):
        cleaned = super().clean()
        deactivating = self.instance.pk and self.initial.get("is_active") and cleaned.get("is_active") is False
        if deactivating:
            try:
                user_deactivation_check(user=self.instance)
            except ApplicationError as exc:
                self.add_error("is_active", exc.message)
        return cleaned


admin.site.unregister(User)


@admin.register(User)
class UserAdmin(auth_admin.UserAdmin):
    """Django's user admin with :class:`UserChangeForm`."""

    form = UserChangeForm
