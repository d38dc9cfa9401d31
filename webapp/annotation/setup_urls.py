from django.urls import path

from . import setup_views as views

app_name = "setup"
urlpatterns = [
    path("projects/new/", views.project_new, name="project_new"),
    path("staff/p/<slug:slug>/setup/", views.setup, name="setup"),
    path("staff/p/<slug:slug>/setup/settings/", views.settings_update, name="settings"),
    path("staff/p/<slug:slug>/setup/rubric/", views.rubric_update, name="rubric"),
    path("staff/p/<slug:slug>/setup/prompts/preview/", views.prompts_preview, name="prompts_preview"),
    path("staff/p/<slug:slug>/setup/prompts/import/", views.prompts_import, name="prompts_import"),
    path("staff/p/<slug:slug>/setup/members/add/", views.member_add, name="member_add"),
    path("staff/p/<slug:slug>/setup/members/remove/", views.member_remove, name="member_remove"),
]
