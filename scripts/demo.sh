#!/usr/bin/env bash
# The main job on embedded defaults: demo corpus, packaged MiniLM, local Ray. Prints where results are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
exec cluster-service run "$@"
