"""Routes of the demo pages (``/web/chat/``, ``/web/notifications/``)."""

urlpatterns: list = []
