"""`cluster-service serve RUN [--layers ...] [--k ...] [--address ...] [--host 127.0.0.1] [--port 8000]`:
the run's concepts as an HTTP service on Ray Serve, until Ctrl-C.

POST /v1/concepts with {"text": "..." or [...], "layers": [...], "k": K} answers, for every word of the
text (word-tokenized as the run's ingest did, its vectors computed as extract did), its concept at each
layer: id, label, distance and confidence. GET /v1/concepts/{layer}/{k}/{id} describes one concept,
GET /v1/run lists what is served, GET /healthz says the service is up; the OpenAPI schema is at
/openapi.json (pages at /docs). Bad input gets a 4xx with one line of JSON naming the field.

The same application deploys on a cluster from a Serve config YAML (deploy/serve.yaml, ray_jobs/serve.py).
"""

from __future__ import annotations

import argparse
import json

from ..serve.config import ServeConfig
from .stage_verb import add_stage_verb, stage_config


def register(sub) -> None:
    p = add_stage_verb(sub, "serve", "serve a run's concepts over HTTP (Ray Serve): new text in, concepts out",
                       __doc__, ServeConfig, "serve")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..serve.run import serve_run

    summary = serve_run(args.run, stage_config(args, ServeConfig, "serve"))
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0
