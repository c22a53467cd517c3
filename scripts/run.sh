#!/usr/bin/env bash
# Sets everything up and starts the service on the embedded default: SQLite, the in-memory
# channel layer and configs/memory.config.yaml (override with CONFIG_FOLDER_PATH, PORT, HOST).
# REALTIME_SERVER=uvicorn serves it with uvicorn instead of daphne; options starting with "-" go
# to the server. REALTIME_PROCESSES=N (or auto) runs N server processes behind the port, with a
# REDIS configuration (docs/deployment.md, "Several processes per instance").
# scripts/entrypoint.sh migrates, syncs the channels and starts the server(s).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${REALTIME_SERVER:-daphne}" in
  daphne | uvicorn) ;;
  *)
    echo "realtime: REALTIME_SERVER=${REALTIME_SERVER} is not a server this service runs: write REALTIME_SERVER=daphne (the default) or REALTIME_SERVER=uvicorn" >&2
    exit 2
    ;;
esac
bash scripts/bootstrap.sh run
. .venv/bin/activate
export HOST="${HOST:-127.0.0.1}" PORT="${PORT:-8080}"
echo "Realtime is starting on http://${HOST}:${PORT}/ with ${REALTIME_SERVER:-daphne} (Ctrl-C stops it)"
exec scripts/entrypoint.sh "$@"
