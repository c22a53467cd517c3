#!/usr/bin/env bash
# Sets up and runs the whole test suite: lint, Django checks, then pytest (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh dev
. .venv/bin/activate
ruff check .
ruff format --check .
# Dependencies run one way and no import cycle remains (the contracts in pyproject.toml).
lint-imports
python manage.py check
python -m pytest "$@"
