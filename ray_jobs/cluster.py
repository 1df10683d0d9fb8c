"""Ray job: the cluster stage, as `cluster-service cluster`.

    ray job submit --address http://HOST:8265 --working-dir . -- python ray_jobs/cluster.py --config job.toml RUN
"""

import sys

from _job import run_job

VERB = "cluster"

if __name__ == "__main__":
    sys.exit(run_job(VERB))
