"""The project's URLs plus ``POST /test/send-event``: a view as an app written for django-eventstream has
it, calling ``send_event`` unchanged (``{"channel", "data"}`` in, 204 out)."""

import json

from django.http import HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from django_eventstream import send_event

from realtime_project.urls import urlpatterns as project_urlpatterns


@csrf_exempt
@require_POST
def send(request):
    body = json.loads(request.body)
    send_event(body["channel"], "message", body["data"])
    return HttpResponse(status=204)


urlpatterns = [path("test/send-event", send), *project_urlpatterns]
