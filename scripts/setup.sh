#!/usr/bin/env bash
# Fresh-machine setup: the CPU build of torch, the package with its test extras, and Chromium for browser tests.
set -euo pipefail
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[dev]"
if ! command -v chromium >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "warning: chromium not installed"
fi
