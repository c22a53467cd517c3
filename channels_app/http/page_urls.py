"""Routes of the demo pages (``/web/chat/``, ``/web/notifications/``)."""

from django.urls import path

from . import pages

urlpatterns = [
    path("chat/", pages.chat, name="web-chat"),
    path("notifications/", pages.notifications, name="web-notifications"),
]
