from django.urls import path

from . import views

app_name = "policies"
urlpatterns = [
    path("", views.versions, name="versions"),
    path("<int:number>/promote/", views.promote, name="promote"),
    path("<int:number>/export/", views.export, name="export"),
    path("<int:number>/export/status/", views.export_status, name="export_status"),
    path("<int:number>/export/<int:export_id>/download/", views.export_download, name="export_download"),
    path("plots/", views.plots_partial, name="plots"),
    path("plots/ratings.png", views.ratings_plot, name="ratings_plot"),
    path("plots/kl.png", views.kl_plot, name="kl_plot"),
    path("audit/", views.audit, name="audit"),
]
