"""Health endpoints for load balancers and Kubernetes probes; unauthenticated and cheap.

``/healthz``: the process is alive and serving. ``/readyz``: the database and (with the REDIS
driver) Redis answer within a second, and the instance is not draining; 503 otherwise, with the
failing check named.
"""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import sync_to_async
from django.db import connection
from django.http import HttpRequest, JsonResponse

logger = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 1.0


def _database_answers() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def _check(name: str, probe) -> tuple[str, str]:
    try:
        await asyncio.wait_for(probe(), CHECK_TIMEOUT_SECONDS)
    except Exception as exc:
        logger.warning("readiness check %s failed: %s", name, exc.__class__.__name__)
        return name, f"failing: {exc.__class__.__name__}"
    return name, "ok"


async def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers."""
    return JsonResponse({"status": "ok"})


async def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: dependencies reachable and not draining."""
    runtime = request.realtime
    probes = [("database", sync_to_async(_database_answers, thread_sensitive=False))]
    if runtime.redis is not None:
        probes.append(("redis", runtime.redis.ping))
    checks = dict(await asyncio.gather(*(_check(name, probe) for name, probe in probes)))
    if runtime.draining:
        checks["draining"] = "shutting down"
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ready" if ready else "not ready", "checks": checks}, status=200 if ready else 503)
