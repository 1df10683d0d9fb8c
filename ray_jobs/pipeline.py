"""Ray job: every stage (extract, cluster, annotate) from one config, as `cluster-service run`.

    ray job submit --address http://HOST:8265 --working-dir . -- python ray_jobs/pipeline.py --config job.toml RUN
"""

import sys

from _job import run_job

VERB = "run"

if __name__ == "__main__":
    sys.exit(run_job(VERB))
