"""The Django admin site, closed to signed-in people who are not staff.

Django's own site sends a signed-in non-staff user to its login form (or
redirects there), which invites password guessing with a second account and
tells nothing. Here every /admin/ URL answers 403 to them; anonymous visitors
still get the admin login page.
"""

from functools import wraps

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.core.exceptions import PermissionDenied


class RewardloopAdminSite(admin.AdminSite):
    def _refuse_signed_in_non_staff(self, request) -> None:
        if request.user.is_authenticated and not self.has_permission(request):
            raise PermissionDenied("The admin is for staff only.")

    def admin_view(self, view, cacheable=False):
        inner = super().admin_view(view, cacheable)

        @wraps(view)
        def guarded(request, *args, **kwargs):
            self._refuse_signed_in_non_staff(request)
            return inner(request, *args, **kwargs)

        return guarded

    def login(self, request, extra_context=None):
        self._refuse_signed_in_non_staff(request)
        return super().login(request, extra_context)


class RewardloopAdminConfig(AdminConfig):
    default_site = "webapp.admin.RewardloopAdminSite"
