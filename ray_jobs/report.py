"""Ray job: the report stage, as `cluster-service report` (the HTML concept browser under RUN/report/).

    ray job submit --address http://HOST:8265 --working-dir . -- python ray_jobs/report.py --config job.toml RUN
"""

import sys

from _job import run_job

VERB = "report"

if __name__ == "__main__":
    sys.exit(run_job(VERB))
