"""Ray job: the analyze stage, as `cluster-service analyze`.

    ray job submit --address http://HOST:8265 --working-dir . -- \\
        python ray_jobs/analyze.py --config job.toml RUN --layer 6 --k 600
"""

import sys

from _job import run_job

VERB = "analyze"

if __name__ == "__main__":
    sys.exit(run_job(VERB))
