"""Django URL routes. The channel URL itself is routed at the ASGI level (channels_app/transports/routing.py)."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("channels_app.http.urls")),
]
