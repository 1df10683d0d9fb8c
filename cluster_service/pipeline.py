"""Every stage from one configuration: extract → cluster → annotate, each resumable.

`cluster-service run` and `ray_jobs/pipeline.py` both call ``run_pipeline``, so a job on a cluster
and a run on a laptop are the same code path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .annotate.config import AnnotateConfig
from .cluster.config import ClusterConfig
from .configs import build
from .corpus import CorpusConfig
from .extract.config import ExtractConfig
from .logs import log_event
from .store import RunStore

log = logging.getLogger("cluster_service.pipeline")

#: sentences of the demo corpus the default run uses: a few minutes end to end on a 2-core machine
DEMO_SENTENCES = 3000


@dataclass
class PipelineConfig:
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    stages: tuple[str, ...] = ("extract", "cluster", "annotate")

    @classmethod
    def from_sections(cls, sections: dict[str, Any], stages: tuple[str, ...] | None = None) -> PipelineConfig:
        """From a config file's sections; with no corpus path, the demo corpus capped at DEMO_SENTENCES."""
        corpus = dict(sections.get("corpus") or {})
        if not corpus.get("path"):
            corpus.setdefault("max_sentences", DEMO_SENTENCES)
        return cls(
            corpus=build(CorpusConfig, corpus, where="corpus"),
            extract=build(ExtractConfig, sections.get("extract"), where="extract"),
            cluster=build(ClusterConfig, sections.get("cluster"), where="cluster"),
            annotate=build(AnnotateConfig, sections.get("annotate"), where="annotate"),
            stages=tuple(stages or sections.get("stages") or cls.stages),
        )


def run_pipeline(run_dir: str, cfg: PipelineConfig) -> dict[str, Any]:
    from .annotate.stage import annotate_run
    from .cluster.stage import cluster_run
    from .extract.stage import run_extract

    store = RunStore(run_dir)
    summary: dict[str, Any] = {"run": store.where()}
    if "extract" in cfg.stages:
        summary["extract"] = run_extract(run_dir, cfg.corpus, cfg.extract)
    if "cluster" in cfg.stages:
        summary["cluster"] = cluster_run(store, cfg.cluster)["layers"]
    if "annotate" in cfg.stages:
        summary["annotate"] = {}
        for layer in summary.get("cluster", {}) or cfg.cluster.layers or store.read_manifest()["layers"]:
            for k in cfg.cluster.k:
                result = annotate_run(store, int(layer), k, cfg.annotate)
                summary["annotate"][f"layer_{layer}_k{k}"] = result
    log_event(log, "pipeline done", run=store.where(), stages=",".join(cfg.stages))
    return summary
