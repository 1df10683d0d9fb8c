#!/usr/bin/env bash
# The cluster stage's layer actors on a lent GPU host (issue 15 part 2), run there from the repo root
# with .gpubundle/ (../shared/gpu/README.md, plus the packaged tokenizer in .gpubundle/tokenizer) and
# data/ (the demo corpus) carried along:
#   bash benchmarks/gpu_layers.sh WORDS LAYERS [KS]      e.g. 1000000 0,3,6,9 600,200,50
# The demo corpus repeated to WORDS whitespace words (say so in the row), random bert-base in bfloat16
# through `extract`, then `cluster --address local`: one Ray actor per GPU taking one layer after
# another. Rows go to $OUT/cluster_scale.json (and the logs to $OUT). Resumable: a
# second call with the same arguments continues the layers that were not done.
set -u
out=${OUT:-/tmp/out}
mkdir -p "$out"
source .gpubundle/install.sh
export PYTHONPATH=$PWD:$PYTHONPATH CLUSTER_SERVICE_TOKENIZER=$PWD/.gpubundle/tokenizer \
  CLUSTER_SERVICE_DATA=$PWD/data HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
words=${1:-1000000}; layers=${2:-0,3,6,9}; ks=${3:-600,200,50}
run=/tmp/layers_run_$words
nvidia-smi --query-gpu=name,memory.total --format=csv > "$out/gpus.csv"
t0=$(date +%s)
if [ ! -f "$run/run.json" ] || ! grep -q '"extract"' "$run/run.json"; then
  python3 - "$words" <<'PY'
import sys
from cluster_service.demo import fetch_demo_corpus
lines = [ln for ln in fetch_demo_corpus().read_text().splitlines() if ln.strip()]
out, n, goal = [], 0, int(sys.argv[1])
while n < goal:
    for ln in lines:
        out.append(ln)
        n += len(ln.split())
        if n >= goal:
            break
open("/tmp/layers_corpus.txt", "w").write("\n".join(out) + "\n")
PY
  corpus="--corpus-path /tmp/layers_corpus.txt --corpus-tokenizer whitespace"
  python3 -m cluster_service.cli ingest "$run" $corpus > "$out/ingest.log" 2>&1
  python3 -m cluster_service.cli extract "$run" $corpus --model random:bert-base --layers "$layers" \
    --dtype bfloat16 --device cuda --engine local > "$out/extract.log" 2>&1
fi
t1=$(date +%s)
timeout "${LIMIT:-540}" python3 -m cluster_service.cli cluster "$run" --layers "$layers" --k "$ks" --address local \
  > "$out/cluster.log" 2>&1
rc=$?
t2=$(date +%s)
python3 - "$run" "$out" "$words" $((t1 - t0)) $((t2 - t1)) $rc <<'PY'
import json, subprocess, sys
sys.path.insert(0, "benchmarks")
from pathlib import Path
from results_io import merge_rows
run, out, words, extract_s, cluster_s, rc = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), *map(int, sys.argv[4:])
manifest = json.loads(Path(run, "run.json").read_text())
stages = {k: v for k, v in manifest["stages"].items() if k.startswith("cluster:layer_")}
gpus = len(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip().splitlines())
name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                      text=True).stdout.splitlines()[0].strip()
done = {k: v for k, v in stages.items() if v.get("status") == "done"}
per_layer = [v["seconds"] for v in done.values()]
row = {"machine": f"{gpus}x {name}", "method": "approx_ward", "stage": "cluster (layer actors)", "n": manifest["tokens"],
       "d": 768, "k": manifest["config"]["cluster"]["k"], "layers": len(stages), "layers_done": len(done), "gpus": gpus,
       "seconds": cluster_s, "extract_seconds": extract_s, "layer_seconds": per_layer,
       "m": sorted({v.get("m") for v in done.values()}), "rc": rc,
       "data": f"random:bert-base (bfloat16) over the WordNet demo corpus repeated to {words} words",
       "note": "cluster-service cluster --address local: one Ray actor per GPU, a layer at a time; seconds: the "
               "stage's wall time in this command (Ray start included)"}
merge_rows("cluster_scale", [row], ("method", "stage", "n", "layers", "gpus"), path=out / "cluster_scale.json")
print(json.dumps(row, indent=1))
PY
grep -v "it/s\]" "$out/cluster.log" | tail -n 15 | cut -c1-300
df -h /tmp | tail -1
exit $rc
