"""The one shape every stage has: a name (its CLI verb), a config dataclass, what it reads and writes
in the run store, and an entry point ``run(store, cfg) -> summary``.

The pipeline only iterates stages; a stage never reaches past its declared inputs into another
stage's files, and each file in the store has exactly one writing stage (ARCHITECTURE.md draws the
whole picture). Entry points are named ``<stage>_run`` and imported only when the stage runs, so
``--help`` and config checks stay fast and light.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import RunStore


@dataclass(frozen=True)
class Stage:
    """One arrow of the data flow in DESIGN.md."""

    name: str
    """The CLI verb and the key in run.json's ``stages``."""
    config: type
    """The stage's config dataclass (its fields are the verb's flags and the file section's keys)."""
    section: str
    """The config file section that holds the fields (``[corpus]`` for ingest)."""
    reads: tuple[str, ...]
    """Store keys (or key patterns) the stage reads."""
    writes: tuple[str, ...]
    """Store keys (or key patterns) only this stage writes."""
    entry: str
    """``module:function`` of the entry point, called as ``function(store, cfg) -> summary dict``."""
    check: str | None = None
    """``module:function`` of a cheap check of the config alone (``function(cfg)``, raising UserError),
    run for every stage of a pipeline before the first one starts: a wrong model name is refused
    before the corpus is ingested, not after."""

    def run(self, store: RunStore, cfg: Any) -> dict[str, Any]:
        return _function(self.entry)(store, cfg)

    def preflight(self, cfg: Any) -> None:
        if self.check:
            _function(self.check)(cfg)


def _function(ref: str):
    module, function = ref.split(":")
    return getattr(importlib.import_module(module), function)
