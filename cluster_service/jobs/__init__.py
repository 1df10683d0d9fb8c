"""Running the pipeline as Ray jobs on a cluster: where a job may write, and the job client.

``ray_jobs/*.py`` are the job entry points; ``cluster-service submit/status/logs`` drive them
through Ray's ``JobSubmissionClient``.
"""
