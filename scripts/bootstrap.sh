#!/usr/bin/env bash
# Installs what the service (and, with "dev", the test suite) needs: a virtualenv with the pinned
# Python packages, and for tests the system binaries they start (redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"

apt_install() {
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "Please install these packages: $*" >&2
    exit 1
  fi
}

install_promtool() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "Please install promtool (Debian: the prometheus package) into .venv/bin or the PATH" >&2
    exit 1
  fi
  local work
  work="$(mktemp -d)"
  [ "$(id -u)" = 0 ] && apt-get update -qq
  (cd "$work" && apt-get download -qq prometheus >/dev/null 2>&1)
  dpkg-deb --fsys-tarfile "$work"/prometheus_*.deb | tar -x -C "$work" ./usr/bin/promtool
  install -m 0755 "$work/usr/bin/promtool" .venv/bin/promtool
  rm -rf "$work"
}

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    apt_install python3-venv
    "$PYTHON" -m venv .venv
  fi
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
if [ "$mode" = "dev" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
  # The Python client (clients/python), editable: its tests run with the rest and use this checkout.
  .venv/bin/python -m pip install -q --disable-pip-version-check -e clients/python
  missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  # Browser tests drive Debian's Chromium; Playwright's own browser download is not used.
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  # tests/test_deploy.py reads the listen backlog with ss.
  command -v ss >/dev/null 2>&1 || missing+=(iproute2)
  if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
  # tests/test_observability.py checks the alert rules and the dashboard's queries with promtool:
  # taken from Debian's prometheus package into the venv, without installing (and starting) the server.
  if [ ! -x .venv/bin/promtool ] && ! command -v promtool >/dev/null 2>&1; then install_promtool; fi
else
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
fi
