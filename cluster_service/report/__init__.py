"""The report stage: a static HTML concept browser of the run under ``RUN/report/``.

``data`` builds what each page shows from the run store, ``stage`` writes the site (the page, its
script and style from ``static/``, and per-table data as small ``.js`` files loaded on demand).
"""

from ..stage import Stage
from .config import ReportConfig

STAGE = Stage(
    name="report", config=ReportConfig, section="report",
    reads=("concepts/layer_{L}_k{K}.parquet", "labels/layer_{L}_k{K}/", "analysis/", "run.json"),
    writes=("report/",),
    entry="cluster_service.report.stage:report_run",
)

__all__ = ["STAGE", "ReportConfig"]
