from django.urls import path

from . import views

app_name = "training"
urlpatterns = [
    path("runs/", views.runs, name="runs"),
    path("runs/table/", views.runs_table, name="runs_table"),
    path("runs/<int:run_id>/", views.run_detail, name="run_detail"),
    path("runs/<int:run_id>/status/", views.run_status, name="run_status"),
    path("runs/<int:run_id>/curves.png", views.run_curves, name="run_curves"),
    path("runs/<int:run_id>/rm-vs-human.png", views.run_rm_vs_human, name="run_rm_vs_human"),
    path("runs/<int:run_id>/cancel/", views.cancel, name="cancel"),
    path("train/", views.train_now, name="train_now"),
    path("settings/", views.settings_update, name="settings"),
    path("compare/", views.compare, name="compare"),
    path("compare/table/", views.compare_table, name="compare_table"),
    path("compare/start/", views.compare_start, name="compare_start"),
    path("export/ratings/", views.export_ratings, name="export_ratings"),
]
