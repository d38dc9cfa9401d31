from django.urls import path

from . import views

app_name = "arena"
urlpatterns = [
    path("p/<slug:slug>/arena/", views.arena, name="arena"),
    path("p/<slug:slug>/arena/next/", views.next_match, name="next"),
    path("p/<slug:slug>/arena/<int:vote_id>/vote/", views.vote, name="vote"),
    path("p/<slug:slug>/arena/undo/", views.undo, name="undo"),
    path("staff/p/<slug:slug>/arena/", views.leaderboard, name="leaderboard"),
    path("staff/p/<slug:slug>/arena/plot.png", views.leaderboard_plot, name="leaderboard_plot"),
]
