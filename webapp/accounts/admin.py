from django.contrib import admin
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.contrib.auth import admin as auth_admin
from django.contrib.auth.models import User
from django.db import router, transaction

from webapp.errors import ApplicationError
from webapp.policies.services import user_deactivation_check, users_deletion_check

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
    """Django's user admin with :class:`UserChangeForm`, refusing to delete (one user, or a selection) the last
    active staff members of a project as it refuses to deactivate them."""

    form = UserChangeForm
    actions = ["delete_selected"]

    def get_deleted_objects(self, objs, request):
        """Django's list of what deleting ``objs`` takes with it; a deletion that would leave a project
        without an active staff member (:func:`webapp.policies.services.users_deletion_check`) is refused
        with the reason among the "protected" objects, which both the delete view and the bulk action
        show ("Cannot delete user") and which makes them refuse a confirmed POST."""
        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        try:
            users_deletion_check(users=objs)
        except ApplicationError as exc:
            protected = [*protected, exc.message]
        return deleted, model_count, perms_needed, protected

    @admin.action(permissions=["delete"], description=django_delete_selected.short_description)
    def delete_selected(self, request, queryset):
        """Django's bulk delete action in one transaction, as the delete view runs in one: the lock
        that :meth:`get_deleted_objects` takes on the projects' rows holds until the deletion is committed."""
        with transaction.atomic(using=router.db_for_write(self.model)):
            return django_delete_selected(self, request, queryset)
