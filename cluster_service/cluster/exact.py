"""Exact Ward on raw vectors (the reference the approximate path is judged against).

fastcluster's ``linkage`` keeps the condensed N²/2 float64 matrix (20K×384: ~70 s, 3.3 GB here);
``linkage_vector`` needs O(N·D) memory but is ~3× slower. We take the matrix path when it fits in
a share of the available memory and fall back to the vector path otherwise.
"""

from __future__ import annotations

import fastcluster
import numpy as np
import psutil

from ..errors import UserError

#: Share of available memory the condensed distance matrix may take before we switch algorithms.
MATRIX_MEMORY_SHARE = 0.4


def matrix_bytes(n: int) -> int:
    return n * (n - 1) // 2 * 8


def exact_ward(x: np.ndarray, *, low_memory: bool | None = None) -> np.ndarray:
    """Scipy-format Ward linkage of the rows of ``x`` (heights √(2·ΔSSE))."""
    if x.ndim != 2 or x.shape[0] < 2:
        raise UserError(f"exact Ward: need a 2-D array with ≥ 2 rows, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise UserError("exact Ward: vectors contain NaN or inf")
    x64 = np.ascontiguousarray(x, dtype=np.float64)
    if low_memory is None:
        low_memory = matrix_bytes(len(x64)) > MATRIX_MEMORY_SHARE * psutil.virtual_memory().available
    if low_memory:
        return fastcluster.linkage_vector(x64, method="ward")
    return fastcluster.linkage(x64, method="ward", preserve_input=False)
