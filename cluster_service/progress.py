"""Progress bars that behave in a terminal and in a job log."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int, desc: str, unit: str = "it") -> tqdm:
    """A tqdm bar on stderr; in a non-terminal (Ray job logs, CI) it redraws at most every 10 s."""
    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr, dynamic_ncols=True,
                mininterval=0.5 if interactive else 10.0, smoothing=0.1)
