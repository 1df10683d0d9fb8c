"""Every stage from one configuration, in data-flow order, each resumable: the pipeline only iterates
stages (``cluster_service.stage.Stage``), it knows nothing of what one stage hands the next.

`cluster-service run` and `ray_jobs/pipeline.py` both call ``run_pipeline``, so a job on a cluster
and a run on a laptop are the same code path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .analysis import STAGE as ANALYZE
from .annotate import STAGE as ANNOTATE
from .cluster import STAGE as CLUSTER
from .configs import ConfigFile, build
from .corpus import STAGE as INGEST
from .errors import UserError
from .extract import STAGE as EXTRACT
from .logs import log_event
from .report import STAGE as REPORT
from .stage import Stage
from .store import RunStore

log = logging.getLogger("cluster_service.pipeline")

#: sentences of the demo corpus the default run uses: a few minutes end to end on a 2-core machine
DEMO_SENTENCES = 3000
#: the demo's analysis: a smaller bootstrap, so that analysing all 7 layers adds at most half the demo's time
DEMO_ANALYZE = {"stability_tokens": 4000}

#: every stage, in the order data flows through them
STAGES: tuple[Stage, ...] = (INGEST, EXTRACT, CLUSTER, ANNOTATE, ANALYZE, REPORT)
#: config file sections a job file may hold (a misspelt one is an error, not silently ignored)
SECTIONS = ("stages", *(s.section for s in STAGES))
DEFAULT_STAGES = tuple(s.name for s in STAGES)


def resolve_stages(names: tuple[str, ...] | list[str], where: str = "--stages") -> tuple[str, ...]:
    """Known names only, in data-flow order; ``extract`` brings ``ingest`` along, so job configs and
    commands written before ingest was a stage of its own keep working."""
    known = DEFAULT_STAGES
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"{where}: unknown stage {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    wanted = set(names) | ({"ingest"} if "extract" in names else set())
    return tuple(n for n in known if n in wanted)


@dataclass
class PipelineConfig:
    configs: dict[str, Any] = field(default_factory=dict)
    """Each stage's config, by stage name."""
    stages: tuple[str, ...] = DEFAULT_STAGES

    @classmethod
    def from_sections(cls, sections: ConfigFile | dict[str, Any], stages: tuple[str, ...] | None = None,
                      flags: dict[str, dict[str, Any]] | None = None) -> PipelineConfig:
        """From a config file's sections and the flags given per section; with no corpus path, the
        demo corpus capped at DEMO_SENTENCES."""
        file = sections if isinstance(sections, ConfigFile) else ConfigFile(sections)
        file.check_sections(SECTIONS)
        flags = flags or {}
        configs = {}
        for stage in STAGES:
            section = dict(file.section(stage.section))
            if stage is INGEST and not (section.get("path") or flags.get("corpus", {}).get("path")):
                section.setdefault("max_sentences", DEMO_SENTENCES)
            if stage is ANALYZE and not (file.section("corpus").get("path") or flags.get("corpus", {}).get("path")):
                for name, value in DEMO_ANALYZE.items():
                    section.setdefault(name, value)
            configs[stage.name] = build(stage.config, section, where=file.where(stage.section),
                                        flags=flags.get(stage.section), flag_prefix=f"{stage.section}-"
                                        if stage.section != "extract" else "")
        names = stages or file.get("stages") or DEFAULT_STAGES
        where = "--stages" if stages else (f"{file.path} stages" if file.path else "stages")
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise UserError(f"{where}: expected a list of stage names, got {names!r}")
        return cls(configs, resolve_stages(tuple(names), where))


def run_pipeline(run: str, cfg: PipelineConfig) -> dict[str, Any]:
    """Every chosen stage's config is checked first, then the stages run in order; returns each
    stage's summary by stage name."""
    store = RunStore(run)
    summary: dict[str, Any] = {"run": store.where()}
    chosen = [stage for stage in STAGES if stage.name in cfg.stages]
    for stage in chosen:
        stage.preflight(cfg.configs[stage.name])
    for stage in chosen:
        result = stage.run(store, cfg.configs[stage.name])
        summary[stage.name] = result
    log_event(log, "pipeline done", run=store.where(), stages=",".join(cfg.stages))
    return summary
