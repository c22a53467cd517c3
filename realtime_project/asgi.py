"""ASGI entry point: ``daphne realtime_project.asgi:application``."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "realtime_project.settings")
# Django must be set up before anything imports models, so consumers are imported after this.
django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

from channels_app.core.runtime import mark_serving  # noqa: E402
from channels_app.http.auth import log_security_warnings  # noqa: E402
from channels_app.http.limits import RequestLimitMiddleware  # noqa: E402
from channels_app.http.limits import install as install_request_limits  # noqa: E402
from channels_app.ops.gctuning import tune_after_startup  # noqa: E402
from channels_app.ops.logformat import RequestIdMiddleware  # noqa: E402
from channels_app.ops.shutdown import install as install_graceful_shutdown  # noqa: E402
from channels_app.transports.routing import http_router, websocket_router  # noqa: E402

log_security_warnings()
install_graceful_shutdown()
install_request_limits()
mark_serving()

application = RequestIdMiddleware(
    ProtocolTypeRouter(
        {
            "http": RequestLimitMiddleware(http_router(django_application)),
            "websocket": websocket_router(),
        }
    )
)

# Last: everything above is long-lived, so it is frozen out of the collector's scans.
tune_after_startup()
