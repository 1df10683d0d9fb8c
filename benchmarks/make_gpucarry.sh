#!/usr/bin/env bash
# Build .gpucarry/ (ignored by git) for benchmarks/gpu_cluster.sh: what a lent GPU machine lacks and
# cannot download, within the 64 MiB that may travel with the repo: the packaged MiniLM as float16
# safetensors (~45 MB), the demo corpus ingested (the tables `extract` reads), and the wheels of zarr,
# fastcluster & co. for Python 3.12. Run from the repo root with the project's .venv active.
set -eu
mkdir -p .gpucarry/wheels .git/info
grep -qx '/.gpucarry/' .git/info/exclude 2>/dev/null || echo '/.gpucarry/' >> .git/info/exclude
pip download -q --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --implementation cp -d .gpucarry/wheels \
  zarr donfig google-crc32c numcodecs msgspec fastcluster typing_extensions psutil
rm -f .gpucarry/wheels/numpy-* .gpucarry/wheels/packaging-* .gpucarry/wheels/PyYAML-* .gpucarry/wheels/pyyaml-*
python - <<'PY'
from transformers import AutoModel, AutoTokenizer

from cluster_service.extract.model import default_model_path

path = default_model_path()
AutoModel.from_pretrained(path).half().save_pretrained(".gpucarry/minilm", safe_serialization=True)
AutoTokenizer.from_pretrained(path).save_pretrained(".gpucarry/minilm")
PY
rm -rf .gpucarry/run
cluster-service ingest .gpucarry/run > /dev/null
du -sh .gpucarry
