#!/usr/bin/env bash
# One-GPU extraction at the chip's limit (issue 15, part 1), run on a lent 1-GPU machine from the repo
# root with .gpubundle/ and data/ carried along (../shared/gpu/README.md):
#   bash benchmarks/gpu_single.sh [WORDS [SECONDS]]
# 1. single process: the fixed-shape 256x64 forward, forward_only padded and packed (pack lengths 128, 256);
# 2. Ray, one actor: host_sink, disk_write, full with 1 layer, then with all 13 (packed path).
# Logs and the result JSON land in $OUT.
set -u
out=${OUT:-/tmp/out}
mkdir -p "$out"
source .gpubundle/install.sh
export PYTHONPATH=$PWD:$PYTHONPATH CLUSTER_SERVICE_TOKENIZER=$PWD/.gpubundle/tokenizer \
  CLUSTER_SERVICE_DATA=$PWD/data HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
words=${1:-1500000}
secs=${2:-22}
common=(--model random:bert-base --machine "1x H200" --writer-threads 4 --workdir /tmp/bench_single)
nvidia-smi --query-gpu=name,memory.total --format=csv > "$out/gpu.csv"
timeout 150 python3 benchmarks/bench_extract.py "${common[@]}" --cases 6 --tokens "$words" \
  --modes forward_fixed_shape,forward_only --paths padded,packed --pack-lengths 128,256 --pack-length 128 \
  --fixed-shape 256x64 --repeats 2 > "$out/single.log" 2>&1
echo "single rc=$?" >> "$out/rc.txt"
for case in 6 all; do
  n=$words; [ "$case" = all ] && n=1200000
  timeout 170 python3 benchmarks/bench_extract.py "${common[@]}" --cases "$case" --tokens "$n" --gpus 1 \
    --seconds "$secs" --modes host_sink,disk_write,full --paths packed --pack-length 128 > "$out/ray_$case.log" 2>&1
  echo "ray $case rc=$?" >> "$out/rc.txt"
  rm -rf /tmp/bench_single
done
cp benchmarks/results/extract.json "$out/extract.json"
grep -v "Loading weights\|extract:" "$out"/single.log "$out"/ray_*.log | grep -v "it/s]" | tail -60
cat "$out/rc.txt"
