from django.urls import path

from . import views

app_name = "annotation"
urlpatterns = [
    path("annotate/", views.annotate, name="annotate"),
    path("annotate/card/", views.card, name="card"),
    path("annotate/next/", views.next_item, name="next"),
    path("annotate/undo/", views.undo, name="undo"),
    path("annotate/history/", views.history, name="history"),
    path("annotate/<int:completion_id>/rate/", views.rate, name="rate"),
    path("annotate/<int:completion_id>/skip/", views.skip, name="skip"),
    path("figures/", views.figures_page, name="figures"),
    path("figures/gold/", views.gold_set, name="gold_set"),
    path("figures/gold/settings/", views.gold_settings, name="gold_settings"),
]
