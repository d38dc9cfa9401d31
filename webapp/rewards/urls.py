from django.urls import path

from . import views

app_name = "rewards"
urlpatterns = [
    path("", views.reward_models, name="reward_models"),
    path("fit/", views.fit_now, name="fit_now"),
    path("settings/", views.settings_update, name="settings"),
]
