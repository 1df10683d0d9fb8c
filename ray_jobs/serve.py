"""The concept service on a Ray cluster: the Serve application builder, and a job entry point.

As a Serve application (the builder `serve run` / `serve deploy` call with the config's `args`):

    serve run ray_jobs.serve:app run=/mnt/shared/runs/demo k=50        # from the repository root
    serve deploy deploy/serve.yaml                                      # the same, declared in YAML

As a Ray job that runs `cluster-service serve` (same flags) on the cluster it was submitted to:

    ray job submit --address http://HEAD:8265 --working-dir . -- python ray_jobs/serve.py /mnt/shared/runs/demo --k 50
"""

import sys

from cluster_service.serve.app import build as app  # noqa: F401  (the builder ray_jobs.serve:app names)

VERB = "serve"

if __name__ == "__main__":
    from _job import run_job

    sys.exit(run_job(VERB))
