from django.urls import path

from . import views

app_name = "policies"
urlpatterns = [
    path("", views.versions, name="versions"),
    path("<int:number>/promote/", views.promote, name="promote"),
]
