#!/bin/sh
# Container entry point (also runs outside Docker; tests/test_deploy.py starts it that way).
#
#   1. resolves CONFIG_FOLDER_PATH (see below) and exports it as an absolute path;
#   2. applies migrations and writes the YAML's channels into the registry;
#   3. execs channels_app/ops/supervisor.py, which raises the open-file limit and, for
#      REALTIME_PROCESSES=1 (the default), execs this script again as the server REALTIME_SERVER
#      names on $HOST:$PORT (default 0.0.0.0:8080), so the server receives SIGTERM directly: daphne
#      (the default) or uvicorn (see docs/deployment.md, "Choosing the server"). For N processes it
#      listens on N SO_REUSEPORT sockets and runs this script once per socket (REALTIME_LISTEN_FD),
#      restarting a process that dies and passing SIGTERM on (docs/deployment.md, "Several
#      processes per instance").
#
# Arguments: options starting with "-" are passed to the server (docker run IMAGE --proxy-headers);
# anything else is run instead of the server, with the same configuration, and without
# migrating (docker compose run realtime python manage.py createsuperuser).
#
# A relative CONFIG_FOLDER_PATH (default configs/memory.config.yaml) is looked for first from
# "/", then from the application folder (/app in the image). This is what makes the Go
# service's compose pair work unchanged: CONFIG_FOLDER_PATH "configs/memory.config.yaml" with the
# file mounted at /configs/memory.config.yaml. Without a mount, the copy baked into the image
# (/app/configs/...) is used. An absolute path is used as it is.
set -eu

APP_DIR=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)
cd "$APP_DIR"

fail() {
    echo "realtime: $*" >&2
    exit 2
}

PORT="${PORT:-8080}"
HOST="${HOST:-0.0.0.0}"
case "$PORT" in
    '' | *[!0-9]*) fail "PORT=$PORT is not a port number: write for example PORT=8080" ;;
esac

# The listen backlog of each listening socket; the kernel caps it at net.core.somaxconn.
REALTIME_LISTEN_BACKLOG="${REALTIME_LISTEN_BACKLOG:-2048}"
case "$REALTIME_LISTEN_BACKLOG" in
    '' | *[!0-9]* | 0) fail "REALTIME_LISTEN_BACKLOG=$REALTIME_LISTEN_BACKLOG is not a queue length: write for example REALTIME_LISTEN_BACKLOG=4096" ;;
esac
backlog="$REALTIME_LISTEN_BACKLOG"

REALTIME_SERVER="${REALTIME_SERVER:-daphne}"
case "$REALTIME_SERVER" in
    daphne | uvicorn) ;;
    *) fail "REALTIME_SERVER=$REALTIME_SERVER is not a server this service runs: write REALTIME_SERVER=daphne (the default) or REALTIME_SERVER=uvicorn" ;;
esac

config="${CONFIG_FOLDER_PATH:-configs/memory.config.yaml}"
case "$config" in
    /*) ;;
    *)
        if [ -e "/$config" ]; then
            config="/$config"
        elif [ -e "$APP_DIR/$config" ]; then
            config="$APP_DIR/$config"
        else
            fail "CONFIG_FOLDER_PATH=$config: neither /$config nor $APP_DIR/$config exists: mount the YAML file there, or point CONFIG_FOLDER_PATH at it with an absolute path"
        fi
        ;;
esac
CONFIG_FOLDER_PATH="$config"
export CONFIG_FOLDER_PATH

# A SQLite database needs a writable folder (in the image: the /data volume).
case "${DATABASE_URL:-}" in
    sqlite:*)
        db_path="${DATABASE_URL#sqlite://}"
        db_path="${db_path#/}"
        case "$db_path" in
            /*) ;;
            *) db_path="$APP_DIR/$db_path" ;;
        esac
        db_dir=$(dirname -- "$db_path")
        if [ ! -d "$db_dir" ] || [ ! -w "$db_dir" ]; then
            fail "DATABASE_URL=$DATABASE_URL: the folder $db_dir does not exist or is not writable by user $(id -u): mount a volume there (docker run -v realtime-data:/data ...)"
        fi
        ;;
esac

if [ "$#" -gt 0 ]; then
    case "$1" in
        -*) ;;
        *) exec "$@" ;;
    esac
fi

if [ -z "${REALTIME_SUPERVISED:-}" ]; then
    echo "realtime: configuration from $CONFIG_FOLDER_PATH"
    # REALTIME_PROCESSES against the driver and the signing key, before anything is migrated.
    python -m channels_app.ops.supervisor --check || exit $?
    python manage.py migrate --noinput
    python manage.py sync_channels
    echo "realtime: listening on $HOST:$PORT ($REALTIME_SERVER)"
    exec python -m channels_app.ops.supervisor -- "$APP_DIR/scripts/entrypoint.sh" "$@"
fi
# One server process. Under a supervisor of several, on the socket it holds open for this process.
fd="${REALTIME_LISTEN_FD:-}"
if [ "$REALTIME_SERVER" = uvicorn ]; then
    # From the configuration: a message limit above server.max_message_size, so that an oversized
    # frame still reaches our check and gets its documented close (at least daphne's 1 MiB), and
    # the drain's grace period in whole seconds.
    limits=$(python -c '
import math, os
from channels_app.config import load_config
grace = float(os.environ.get("REALTIME_SHUTDOWN_GRACE_SECONDS", "20"))
print(max(1 << 20, 2 * load_config().server.max_message_size), max(math.ceil(grace), 1))
')
    # No permessage-deflate: daphne offers none, and it would cost CPU and zlib memory per connection.
    # --http: deadlines for a request's head and body (channels_app/adapters/uvicorn_http.py).
    # --ws: uvicorn's websockets-sansio, answering a client's close frame once its slot is free
    # (channels_app/adapters/uvicorn_ws.py).
    if [ -n "$fd" ]; then
        set -- --fd "$fd" "$@"
    else
        set -- --host "$HOST" --port "$PORT" "$@"
    fi
    exec uvicorn realtime_project.asgi:application \
        --ws channels_app.adapters.uvicorn_ws:WebSocketProtocol --ws-max-size "${limits% *}" --ws-per-message-deflate false \
        --ws-ping-interval 20 --ws-ping-timeout 30 --lifespan off --backlog "$backlog" \
        --http channels_app.adapters.uvicorn_http:LimitedH11Protocol \
        --timeout-graceful-shutdown "${limits#* }" "$@"
fi
# daphne's own listen backlog is 50: connection storms overflow it. An endpoint string sets it
# (and replaces -b/-p, which daphne would open as a second listener). Twisted wants the colons
# of an IPv6 address escaped. A socket from the supervisor already listens with the backlog: daphne
# adopts it through Twisted's systemd endpoint (socket activation's convention: descriptor 3, and
# LISTEN_PID is this process, which exec keeps; daphne's own --fd names an endpoint Twisted lacks).
if [ -n "$fd" ]; then
    if [ "$fd" != 3 ]; then
        exec 3<&"$fd"
    fi
    LISTEN_FDS=1
    LISTEN_FDNAMES=realtime
    LISTEN_PID=$$
    export LISTEN_FDS LISTEN_FDNAMES LISTEN_PID
    case "$HOST" in
        *:*) endpoint="systemd:domain=INET6:index=0" ;;
        *) endpoint="systemd:domain=INET:index=0" ;;
    esac
else
    interface=$(printf '%s' "$HOST" | sed 's/:/\\:/g')
    endpoint="tcp:port=$PORT:interface=$interface:backlog=$backlog"
fi
exec daphne -e "$endpoint" "$@" realtime_project.asgi:application
