#!/usr/bin/env bash
# Set up, lint, and run the whole test suite (unit, integration, acceptance).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the report's browser test drives Debian's headless Chromium (the demo never needs it)
if [ "$(id -u)" = 0 ] && [ ! -x /usr/bin/chromium ]; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
fi
. .venv/bin/activate
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
ruff check .
exec python -m pytest -q -ra "$@"
