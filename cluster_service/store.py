"""The run store: one directory that is the contract between stages (see DESIGN.md).

Layout::

    RUN/
      run.json                      resolved configs, versions, model id, corpus fingerprint, stage status
      sentences.parquet             sentence_id, text
      tokens.parquet                row, sentence_id, position, word, occurrence
      activations.zarr/layer_{L}    float16 [N, D], sharded along rows only, full width
      extract_done/shard_{i}        done-marker of one row shard (written after its data is durable)
      clusters/layer_{L}/           micro assignments, centroids, linkage, assignments per K
      concepts/layer_{L}_k{K}.parquet   concept table (schema: CONCEPT_SCHEMA, plus label columns)
      annotations.sqlite            LLM reply cache

Only the driver of a stage writes ``run.json``; workers own whole Zarr shards and write nothing else.
Every file that is read by another stage is written to a temporary name and renamed into place, so a
reader never sees half a file and a killed writer leaves nothing that looks done.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import UserError

MANIFEST = "run.json"

#: Columns every concept table has (written by the cluster stage). The annotate stage adds
#: ``label``, ``label_status`` ("ok" / "failed"), ``label_error``, ``label_backend``, ``label_model``,
#: ``label_prompt``, ``label_raw``, ``label_description``, ``label_type``, ``label_is_baseline``.
CONCEPT_SCHEMA = pa.schema(
    [
        ("concept", pa.int32()),
        ("size", pa.int64()),
        # every member word, duplicates kept, in row order: what the paper's prompt lists
        ("words", pa.list_(pa.string())),
        # word types by descending count (ties by word), at most 50
        ("top_types", pa.list_(pa.struct([("word", pa.string()), ("count", pa.int64())]))),
        # a seeded handful of member occurrences in context
        (
            "examples",
            pa.list_(
                pa.struct(
                    [
                        ("row", pa.int64()),
                        ("sentence_id", pa.int64()),
                        ("position", pa.int32()),
                        ("word", pa.string()),
                        ("sentence", pa.string()),
                    ]
                )
            ),
        ),
        ("centroid", pa.list_(pa.float32())),
    ]
)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_parquet(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunStore:
    """Paths and small atomic helpers for one run directory."""

    def __init__(self, root: str | Path):
        from .jobs.paths import shared_run_path

        # a URL would silently become a local folder named 's3:'; object stores are not supported yet
        self.root = Path(shared_run_path(str(root), absolute=False))

    # ---- layout -------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def tokens_path(self) -> Path:
        return self.root / "tokens.parquet"

    @property
    def sentences_path(self) -> Path:
        return self.root / "sentences.parquet"

    @property
    def activations_path(self) -> Path:
        return self.root / "activations.zarr"

    @property
    def done_dir(self) -> Path:
        return self.root / "extract_done"

    @property
    def annotations_db(self) -> Path:
        return self.root / "annotations.sqlite"

    def clusters_dir(self, layer: int) -> Path:
        return self.root / "clusters" / f"layer_{layer}"

    def concepts_path(self, layer: int, k: int) -> Path:
        return self.root / "concepts" / f"layer_{layer}_k{k}.parquet"

    @staticmethod
    def layer_name(layer: int) -> str:
        return f"layer_{layer}"

    # ---- manifest -----------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def read_manifest(self) -> dict[str, Any]:
        if not self.exists():
            raise UserError(f"{self.root}: not a run store (no {MANIFEST}); run `cluster-service extract` first")
        try:
            return json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{self.manifest_path}: corrupt JSON ({exc})") from None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_bytes(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=True).encode())

    def update_manifest(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        manifest = self.read_manifest() if self.exists() else {}
        change(manifest)
        self.write_manifest(manifest)
        return manifest

    def record_config(self, section: str, config: dict[str, Any]) -> None:
        """Keep the resolved config a stage ran with in run.json (the last one, per section)."""
        self.update_manifest(lambda m: m.setdefault("config", {}).__setitem__(section, config))

    def set_stage(self, stage: str, status: str, **info: Any) -> None:
        """Record a stage's status ("running" / "done") and facts about it in run.json."""

        def change(m: dict[str, Any]) -> None:
            entry = m.setdefault("stages", {}).setdefault(stage, {})
            entry.update(info)
            entry["status"] = status
            entry["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

        self.update_manifest(change)

    # ---- tables -------------------------------------------------------------------------------
    def read_tokens(self, columns: list[str] | None = None) -> pa.Table:
        if not self.tokens_path.is_file():
            raise UserError(f"{self.tokens_path}: missing; run `cluster-service extract` first")
        return pq.read_table(self.tokens_path, columns=columns)

    def read_sentences(self) -> pa.Table:
        if not self.sentences_path.is_file():
            raise UserError(f"{self.sentences_path}: missing; run `cluster-service extract` first")
        return pq.read_table(self.sentences_path)

    def read_concepts(self, layer: int, k: int) -> pa.Table:
        path = self.concepts_path(layer, k)
        if not path.is_file():
            raise UserError(f"{path}: no concept table; run `cluster-service cluster {self.root} "
                            f"--layer {layer} --k {k}` first")
        return pq.read_table(path)

    def write_concepts(self, layer: int, k: int, table: pa.Table) -> None:
        atomic_write_parquet(self.concepts_path(layer, k), table)

    # ---- activations --------------------------------------------------------------------------
    def open_activations(self, mode: str = "r"):
        import zarr

        if not self.activations_path.exists():
            raise UserError(f"{self.activations_path}: missing; run `cluster-service extract` first")
        return zarr.open_group(str(self.activations_path), mode=mode)

    def layer_array(self, layer: int):
        group = self.open_activations("r")
        name = self.layer_name(layer)
        if name not in group:
            stored = sorted(int(k.split("_")[1]) for k in group.array_keys())
            raise UserError(f"{self.activations_path}: layer {layer} not stored (stored: {stored})")
        return group[name]

    def size_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
