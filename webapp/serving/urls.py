from django.urls import path, re_path

from . import views

app_name = "serving"
urlpatterns = [
    path("chat/completions", views.chat_completions, name="chat_completions"),
    path("completions", views.completions, name="completions"),
    path("models", views.models, name="models"),
    path("models/<str:model>", views.model, name="model"),
    re_path(r"^(?P<rest>.*)$", views.unknown_url, name="unknown_url"),  # last: OpenAI's 404 shape for the rest
]
