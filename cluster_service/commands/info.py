"""`cluster-service info RUN`: what a run store holds and how far each stage got."""

from __future__ import annotations

import argparse
import json

from ..store import RunStore


def register(sub) -> None:
    p = sub.add_parser("info", help="summarise a run store", description=__doc__)
    p.add_argument("run", metavar="RUN", help="run directory or object-store URL (s3://bucket/prefix)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=main)


def summarize(store: RunStore) -> dict:
    from ..annotate.labels import label_sets
    from ..extract.writer import done_shards

    m = store.read_manifest()
    concepts = sorted(n.removesuffix(".parquet") for n in store.listdir("concepts") if n.endswith(".parquet"))
    return {
        "run": store.where(),
        "model": m.get("model", {}).get("name"),
        "tokens": m.get("tokens"),
        "sentences": m.get("sentences"),
        "layers": m.get("layers"),
        "dims": m.get("model", {}).get("hidden_size"),
        "shards_done": f"{len(done_shards(store))}/{m.get('shards')}",
        "size_on_disk_mb": round(store.size() / 2**20, 2),
        "stages": {k: v.get("status") for k, v in m.get("stages", {}).items()},
        "concept_tables": concepts,
        "labels": label_sets(store),
    }


def main(args: argparse.Namespace) -> int:
    info = summarize(RunStore(args.run))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0
