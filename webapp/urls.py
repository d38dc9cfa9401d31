from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from . import views
from .api import api

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("favicon.ico", views.favicon, name="favicon"),
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/", include("webapp.accounts.urls")),
    path("api/v1/", api.urls),
    path("v1/", include("webapp.serving.urls")),  # OpenAI-compatible inference
    path("p/<slug:slug>/", include("webapp.annotation.urls")),
    path("staff/p/<slug:slug>/", include("webapp.training.urls")),
    path("staff/p/<slug:slug>/versions/", include("webapp.policies.urls")),
    path("staff/p/<slug:slug>/reward-models/", include("webapp.rewards.urls")),
    path("", include("webapp.arena.urls")),
    path("", include("webapp.annotation.setup_urls")),
    path("admin/", admin.site.urls),
]
