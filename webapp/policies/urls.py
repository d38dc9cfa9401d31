from django.urls import path

from . import views

app_name = "policies"
urlpatterns = [
    path("", views.versions, name="versions"),
    path("<int:number>/promote/", views.promote, name="promote"),
    path("<int:number>/export/", views.export, name="export"),
    path("plots/ratings.png", views.ratings_plot, name="ratings_plot"),
    path("plots/kl.png", views.kl_plot, name="kl_plot"),
    path("audit/", views.audit, name="audit"),
]
