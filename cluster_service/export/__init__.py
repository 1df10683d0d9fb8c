"""Publishing a run's concepts: ``export`` (the paper's TCN layout, or Parquet / JSONL tables with a data
card) and ``import`` (a TCN / ConceptX folder back into a run store).

Neither is a pipeline stage: export writes only under its ``--out`` folder (default ``RUN/export/<format>/``)
and import only into a fresh run store. Both read the concepts through ``concepts.labelled_table`` (the
concept table with every annotator's labels and the analysis tables), as the report does.
"""

from __future__ import annotations

from typing import Any

from ..store import RunStore
from .config import ExportConfig


def default_out(store: RunStore, fmt: str) -> str:
    """Where an export goes when ``--out`` is not given: ``RUN/export/<format>/``."""
    return store.where(f"export/{fmt}")


def export_run(store: RunStore, cfg: ExportConfig) -> dict[str, Any]:
    """Export ``store`` as ``cfg.format`` into ``cfg.out`` (rewriting the same files on a rerun)."""
    store.read_manifest()  # a clear line when RUN is not a run store
    out = RunStore(cfg.out or default_out(store, cfg.format))
    if cfg.format == "tcn":
        from .tcn import write_tcn

        return write_tcn(store, out, cfg.layers, cfg.k, cfg.annotator)
    from .dataset import write_dataset

    return write_dataset(store, out, cfg.format, cfg.layers, cfg.k)


__all__ = ["ExportConfig", "default_out", "export_run"]
