from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("cached/", views.cached),
    path("session/", views.visits),
    path("form/", views.form),
]
