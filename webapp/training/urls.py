from django.urls import path

from . import views

app_name = "training"
urlpatterns = [
    path("runs/", views.runs, name="runs"),
    path("runs/<int:run_id>/", views.run_detail, name="run_detail"),
    path("train/", views.train_now, name="train_now"),
]
