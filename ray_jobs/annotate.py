"""Ray job: the annotate stage for one layer and K, as `cluster-service annotate`.

    ray job submit --address http://HOST:8265 --working-dir . -- \\
        python ray_jobs/annotate.py --config job.toml RUN --layer 6 --k 50
"""

import sys

from _job import run_job

VERB = "annotate"

if __name__ == "__main__":
    sys.exit(run_job(VERB))
