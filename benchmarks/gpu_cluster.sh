#!/usr/bin/env bash
# Every token a leaf on one GPU (issue 18), run on a lent 1-GPU machine from the repo root with
# .gpucarry/ carried along: the packaged MiniLM as float16 safetensors (no weights can be downloaded
# there), the demo corpus's ingested tables, and the wheels of zarr & co. (FAISS and Ray stay behind:
# the torch path needs neither, and the model plus Ray would not fit the 64 MiB that may travel).
# Build .gpucarry/ with benchmarks/make_gpucarry.sh first.
#   bash benchmarks/gpu_cluster.sh STEP...   (steps: extract, knn, scale, timing1m, timing5m, exact, exact_real,
#   exact_stage)
# Logs and result JSON land in $OUT.
set -u
out=${OUT:-/tmp/out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpucarry/wheels/*.whl
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
run=/tmp/gpu_run
results="$out/cluster_scale.json"
cp benchmarks/results/cluster_scale.json "$results"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$out/gpu.csv"
for step in "$@"; do
  case $step in
    extract)
      rm -rf $run && cp -r .gpucarry/run $run
      timeout 300 python3 -m cluster_service.cli extract $run --model "$PWD/.gpucarry/minilm" --layers 3,4,5,6 \
        --pooling last --engine local --device cuda --dtype float32 > "$out/extract.log" 2>&1 ;;
    knn)
      timeout 400 python3 benchmarks/bench_cluster_scale.py knn --run $run --layers 3,4,5,6 --device cuda \
        --results "$results" > "$out/knn.log" 2>&1 ;;
    scale)
      timeout 400 python3 benchmarks/bench_cluster_scale.py scale --run $run --layers 3,4,5,6 --device cuda \
        --results "$results" > "$out/scale.log" 2>&1 ;;
    scale6)
      timeout 300 python3 benchmarks/bench_cluster_scale.py scale --run $run --layers 6 --device cuda \
        --results "$results" > "$out/scale6.log" 2>&1 ;;
    timing1m|timing5m)
      n=1000000; [ $step = timing5m ] && n=5000000
      timeout ${TIMING_S:-540} python3 benchmarks/bench_cluster_scale.py timing --device cuda --ns $n --methods approx \
        --cleanup --workdir /tmp/cluster_bench --results "$results" > "$out/$step.log" 2>&1 ;;
    exact)  # exact Ward over 1M synthetic x 768 (N=${EXACT_N:-1000000}), checked against fastcluster on 10K
      timeout ${EXACT_S:-560} python3 benchmarks/bench_cluster_scale.py exact --device cuda --n ${EXACT_N:-1000000} \
        --d 768 --results "$results" > "$out/exact.log" 2>&1 ;;
    exact_real)  # the same over the first 1M real MiniLM tokens of layers 3-6 stacked (after extract)
      timeout ${EXACT_S:-560} python3 benchmarks/bench_cluster_scale.py exact --device cuda --run $run \
        --layers 3,4,5,6 --n ${EXACT_N:-1000000} --results "$results" > "$out/exact_real.log" 2>&1 ;;
    exact_stage)  # the cluster stage end to end with --method exact on the GPU, two real layers (after extract)
      timeout 300 python3 -m cluster_service.cli cluster $run --layers 3,6 --k 600,200,50 --method exact \
        --device cuda > "$out/exact_stage.log" 2>&1 ;;
  esac
  echo "$step rc=$?" >> "$out/rc.txt"
done
cat "$out/rc.txt"; tail -n 25 "$out"/*.log | grep -v "it/s]" | cut -c1-400
