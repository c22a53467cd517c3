"""The OpenAPI document describes exactly the API's routes and methods."""

import re

from django.urls import URLPattern, URLResolver, get_resolver

from channels_app.http.openapi import openapi_document
from channels_app.transports.routing import CHANNEL_PATH


def _django_routes(patterns, prefix: str = "") -> dict[str, set[str]]:
    routes: dict[str, set[str]] = {}
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            routes.update(_django_routes(pattern.url_patterns, route))
        elif isinstance(pattern, URLPattern) and route.startswith("api/v1/"):
            methods = getattr(pattern.callback, "allowed_methods", ())
            path = "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
            routes[path] = {method.lower() for method in methods}
    return routes


def test_every_route_and_method_is_documented_and_nothing_else():
    routes = _django_routes(get_resolver().url_patterns)
    # GET on the channel URL is routed before Django (transports/routing.py): streams, WebSockets, preflight.
    assert CHANNEL_PATH.startswith("^api/v1/channels/")
    routes.setdefault("/api/v1/channels/{channel}", set()).add("get")
    documented = {
        path: {method for method in item if method in ("get", "post", "put", "patch", "delete")}
        for path, item in openapi_document()["paths"].items()
    }
    assert documented == routes


def test_every_reference_resolves():
    document = openapi_document()
    text = repr(document)
    for name in re.findall(r"#/components/schemas/(\w+)", text):
        assert name in document["components"]["schemas"], name
