#!/usr/bin/env bash
# Sets everything up and starts the service on the embedded default: SQLite, the in-memory
# channel layer and configs/memory.config.yaml (override with CONFIG_FOLDER_PATH, PORT, HOST).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh run
. .venv/bin/activate
python manage.py migrate --noinput
python manage.py sync_channels
echo "Realtime is starting on http://${HOST:-127.0.0.1}:${PORT:-8080}/ (Ctrl-C stops it)"
exec daphne -b "${HOST:-127.0.0.1}" -p "${PORT:-8080}" realtime_project.asgi:application
