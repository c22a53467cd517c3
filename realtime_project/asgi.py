"""ASGI entry point: ``daphne realtime_project.asgi:application``."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "realtime_project.settings")
# Django must be set up before anything imports models, so the service is imported after this.
django_application = get_asgi_application()

from channels_app.composition import (  # noqa: E402
    build_application,
    install_connection_checks,
    install_request_limits,
    process_runtime,
)
from channels_app.http.auth import log_security_warnings  # noqa: E402
from channels_app.ops.gctuning import tune_after_startup  # noqa: E402
from channels_app.ops.shutdown import install as install_graceful_shutdown  # noqa: E402

log_security_warnings()
application = build_application(django_application)
install_graceful_shutdown(process_runtime())
install_request_limits()
install_connection_checks()

# Last: everything above is long-lived, so it is frozen out of the collector's scans.
tune_after_startup()
