"""HTTP routes served by Django views.

``GET /api/v1/channels/<channel>`` (streams, WebSockets and the preflight) is routed before Django,
in ``transports/routing.py``, and so are the server API's routes below (``api_urlpatterns``):
``transports/routing.py`` serves them straight from ASGI, around Django's middleware (see
``http/direct_api.py``). They stay in Django's URL conf for ``reverse()`` and Django's test client.
"""

from django.urls import include, path

from . import api, health, metrics, openapi, pages

api_urlpatterns = [
    path("api/v1/openapi.json", openapi.openapi_json, name="openapi"),
    path("api/v1/channels", api.channels_collection, name="channels"),
    path("api/v1/channels/<str:channel>", api.channel_item, name="channel"),
    path("api/v1/channels/<str:channel>/messages", api.channel_messages, name="channel-messages"),
    path("api/v1/channels/<str:channel>/presence", api.channel_presence, name="channel-presence"),
    path("api/v1/messages", api.messages_push_batch, name="messages"),
    path("api/v1/tokens", api.tokens_create, name="tokens"),
]

urlpatterns = [
    path("", pages.home, name="home"),
    path("api/docs/", pages.api_docs, name="api-docs"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics, name="metrics"),
    *api_urlpatterns,
    path("web/", include("channels_app.http.page_urls")),
]
