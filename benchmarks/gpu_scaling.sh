#!/usr/bin/env bash
# Extraction scaling over the GPUs of one lent host (issue 5), run there from the repo root with
# .gpubundle/ carried along (../shared/gpu/README.md):
#   bash benchmarks/gpu_scaling.sh CASE WORDS GPUS [SECONDS [MODES]]
#   bash benchmarks/gpu_scaling.sh 6 26000000 1,2,4 22      # one layer
#   bash benchmarks/gpu_scaling.sh all 2500000 1,2,4 22     # all 13 layers (20 KB a word on disk)
# Logs, the result JSON and (on failure) Ray's session logs land in $OUT.
set -u
out=${OUT:-/tmp/out}
mkdir -p "$out"
source .gpubundle/install.sh
export PYTHONPATH=$PWD:$PYTHONPATH CLUSTER_SERVICE_TOKENIZER=$PWD/.gpubundle/tokenizer \
  CLUSTER_SERVICE_DATA=$PWD/data HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
nvidia-smi --query-gpu=name,memory.total --format=csv > "$out/gpus_$1.csv"
df -h . /tmp > "$out/df_$1.txt"
timeout "${LIMIT:-540}" python3 benchmarks/bench_extract.py --model random:bert-base --cases "$1" \
  --tokens "$2" --gpus "$3" --seconds "${4:-22}" \
  --modes "${5:-host_sink,disk_write,full}" --writer-threads 4 ${IN_FLIGHT:+--in-flight "$IN_FLIGHT"} --workdir /tmp/bench_scaling \
  > "$out/bench_$1_${IN_FLIGHT:-d}.log" 2>&1
rc=$?
cp benchmarks/results/extract.json "$out/extract_$1_${IN_FLIGHT:-d}.json"
if [ "$rc" -ne 0 ]; then
  tar czf "$out/ray_logs_$1.tgz" -C /tmp/ray session_latest/logs 2>/dev/null
fi
grep -v "Loading weights\|extract:" "$out/bench_$1_${IN_FLIGHT:-d}.log" | tail -40
rm -rf /tmp/bench_scaling
exit "$rc"
