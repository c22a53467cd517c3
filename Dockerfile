# Realtime: Django Channels served by daphne (or uvicorn: REALTIME_SERVER). See docs/deployment.md.
#
#   docker build -t realtime:0.1.0 .
#   docker run -p 8080:8080 -v realtime-data:/data realtime:0.1.0
#
# Every dependency in requirements.txt ships binary wheels for this base, so no compiler is
# installed.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The service runs as this unprivileged user (numeric, so Kubernetes' runAsNonRoot can check it).
# /data is the only folder it writes to: the SQLite database lives there.
RUN groupadd --system --gid 10001 realtime \
    && useradd --system --uid 10001 --gid realtime --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin realtime \
    && mkdir -p /data \
    && chown realtime:realtime /data

WORKDIR /app

# Dependencies in their own layer: rebuilt only when requirements.txt changes.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

# The code (see .dockerignore), owned by root and read-only for the service user.
COPY . .
RUN python -m compileall -q channels_app realtime_project

# REALTIME_SERVER: daphne (the default) or uvicorn, which delivers 2-3x the WebSocket messages per
# CPU-second (docs/deployment.md, "Choosing the server"); any other value stops the container.
# PORT: where the server listens. DATABASE_URL: SQLite in the /data volume (for more than one
# instance use PostgreSQL: postgres://user:password@host:5432/name). DJANGO_ALLOWED_HOSTS: set it
# to the host names clients use (behind a load balancer: its public name), comma-separated.
# CONFIG_FOLDER_PATH: unset means configs/memory.config.yaml; a relative path is looked for from
# "/" first (mount the file at /configs/...), then from /app (the copies baked in here).
# REALTIME_PROCESSES: server processes behind PORT (one uses one core; "auto" = one per core the
# container may use; more than one needs pubsub.driver REDIS). REALTIME_LISTEN_BACKLOG: each
# listening socket's accept queue, capped by the host's net.core.somaxconn. Give the container the
# open-file limit its connections need: docker run --ulimit nofile=65536:65536 (the entry point
# raises the soft limit to the hard one). docs/deployment.md, "Several processes per instance"
# and "Limits: files, backlog, ports".
ENV REALTIME_SERVER=daphne \
    REALTIME_PROCESSES=1 \
    REALTIME_LISTEN_BACKLOG=2048 \
    PORT=8080 \
    DATABASE_URL=sqlite:////data/db.sqlite3 \
    DJANGO_ALLOWED_HOSTS=localhost,127.0.0.1,[::1]
VOLUME ["/data"]
EXPOSE 8080

USER 10001:10001

# No curl in the slim image: Python's urllib. The Host header is the first entry of
# DJANGO_ALLOWED_HOSTS, so the check passes whatever host names the deployment allows.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; host = os.environ.get('DJANGO_ALLOWED_HOSTS', '').split(',')[0].strip().lstrip('.').replace('*', '') or 'localhost'; urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:' + os.environ.get('PORT', '8080') + '/healthz', headers={'Host': host}), timeout=4)"]

ENTRYPOINT ["/app/scripts/entrypoint.sh"]
