#!/usr/bin/env bash
# The test command (offline, CPU): lint, then the whole suite.
set -euo pipefail
ruff check .
python -m pytest -q -p no:cacheprovider "$@"
