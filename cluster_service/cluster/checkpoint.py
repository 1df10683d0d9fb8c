"""Where the steps of the tree keep their results between runs.

Each step's output is saved under a name with the settings key that produced it; a step whose
stored key equals the key it would run with is skipped. The stage checkpoints into the run store
(``LayerDir``: whole files under ``clusters/layer_{L}/`` plus ``state.json``), so a rerun with the same
settings skips finished steps and a changed setting redoes only what depends on it; the quality report
and the tests checkpoint into ``NoCheckpoint``, which keeps nothing.
"""

from __future__ import annotations

import io
import json
from typing import Any, Protocol

import numpy as np

from ..store import RunStore


class Checkpoint(Protocol):
    """Arrays and scalar values saved under a name, each with the settings key it was made with."""

    def have(self, name: str, key: dict) -> bool:
        """Whether ``name`` is stored with exactly this settings key."""
        ...

    def load(self, name: str) -> np.ndarray: ...

    def save(self, name: str, array: np.ndarray, key: dict) -> None: ...

    def value(self, name: str, key: dict) -> Any:
        """The scalar saved under ``name`` with this key, or None."""
        ...

    def save_value(self, name: str, value: Any, key: dict) -> None: ...


class NoCheckpoint:
    """Keeps nothing: every step runs (an in-memory fit)."""

    def have(self, name: str, key: dict) -> bool:
        return False

    def load(self, name: str) -> np.ndarray:
        raise KeyError(name)

    def save(self, name: str, array: np.ndarray, key: dict) -> None:
        pass

    def value(self, name: str, key: dict) -> Any:
        return None

    def save_value(self, name: str, value: Any, key: dict) -> None:
        pass


class LayerDir:
    """Whole .npy and .json files in the run store plus a state file of the settings each was made with."""

    def __init__(self, store: RunStore, layer: int):
        self.store = store
        self.prefix = store.clusters_key(layer)
        self.state: dict[str, Any] = (json.loads(store.read_bytes(self.key("state.json")))
                                      if store.has(self.key("state.json")) else {})

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def have(self, name: str, key: dict) -> bool:
        return self.state.get(name) == key and self.store.has(self.key(name))

    def load(self, name: str) -> np.ndarray:
        return np.load(io.BytesIO(self.store.read_bytes(self.key(name))))

    def save(self, name: str, array: np.ndarray, key: dict) -> None:
        buf = io.BytesIO()
        np.save(buf, array)
        self.store.write_bytes(self.key(name), buf.getvalue())
        self.mark(name, key)

    def value(self, name: str, key: dict) -> Any:
        entry = self.state.get(name, {})
        return entry.get("value") if entry.get("key") == key else None

    def save_value(self, name: str, value: Any, key: dict) -> None:
        self.mark(name, {"key": key, "value": value})

    def load_json(self, name: str) -> Any:
        return json.loads(self.store.read_bytes(self.key(name)))

    def save_json(self, name: str, value: Any, key: dict) -> None:
        self.store.write_bytes(self.key(name), json.dumps(value, indent=1).encode())
        self.mark(name, key)

    def forget(self, name: str) -> None:
        """Remove a file this stage no longer writes (e.g. under a renamed name) and its state entry."""
        if self.store.has(self.key(name)):
            self.store.remove(self.key(name))
        if self.state.pop(name, None) is not None:
            self._write_state()

    def mark(self, name: str, key: dict) -> None:
        self.state[name] = key
        self._write_state()

    def _write_state(self) -> None:
        self.store.write_bytes(self.key("state.json"), json.dumps(self.state, indent=1, sort_keys=True).encode())
