#!/usr/bin/env bash
# Set up a virtual environment with everything the project needs, and fetch the demo corpus.
# Idempotent: a second run only checks. CPU machines get the CPU build of torch (no CUDA download).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
# this machine kind's pip configuration names local indexes that may be empty: hide that noise only
pip() { command pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
if ! python -c "import torch" 2>/dev/null; then
  # the CPU wheel of 2.13.0 lies on this machine kind's disk; installing torch first keeps the
  # project's `torch>=2.6` from pulling a CUDA build of several GB
  pip install -q "torch==2.13.0"
fi
pip install -q -e ".[dev]"
export HF_HUB_OFFLINE=1
python -m cluster_service.demo >/dev/null
echo "setup done: $(python -c 'import cluster_service,torch;print("cluster_service",cluster_service.__version__,"torch",torch.__version__)')"
