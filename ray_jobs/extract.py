"""Ray job: the extract stage, as `cluster-service extract`.

    ray job submit --address http://HOST:8265 --working-dir . -- python ray_jobs/extract.py --config job.toml RUN
"""

import sys

from _job import run_job

VERB = "extract"

if __name__ == "__main__":
    sys.exit(run_job(VERB))
