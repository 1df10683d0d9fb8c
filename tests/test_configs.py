"""Dataclass configs: field docstrings become --help, files and flags layer, mistakes are user errors."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest

from cluster_service.configs import add_dataclass_arguments, field_docs, from_args, load_config_file
from cluster_service.errors import UserError
from cluster_service.store import RunStore


@dataclass
class Demo:
    """A config for the tests."""

    size: int = 3
    """How many things (100% of them)."""
    name: str = "x"
    """The name."""
    mode: Literal["a", "b"] = "a"
    """Which mode."""
    flag: bool = False
    """Switch it on."""
    items: list[int] = field(default_factory=list)
    """Some numbers."""


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_dataclass_arguments(p, Demo, prefix="demo-")
    return p.parse_args(argv)


@pytest.mark.unit
def test_docstrings_become_help(capsys):
    assert field_docs(Demo)["size"] == "How many things (100% of them)."
    p = argparse.ArgumentParser()
    add_dataclass_arguments(p, Demo)
    p.print_help()
    text = capsys.readouterr().out
    for needle in ("How many things (100% of them). (default: 3)", "Switch it on.", "--no-flag", "{a,b}"):
        assert needle in text


@pytest.mark.unit
def test_flags_override_file_which_overrides_defaults(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[demo]\nsize = 7\nname = "file"\nitems = [1, 2]\n')
    section = load_config_file(cfg_file)["demo"]
    cfg = from_args(Demo, parse(["--demo-name", "flag", "--demo-flag", "--demo-items", "4,5"]), section,
                    prefix="demo-")
    assert (cfg.size, cfg.name, cfg.flag, cfg.items, cfg.mode) == (7, "flag", True, [4, 5], "a")
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("demo:\n  mode: b\n")
    assert from_args(Demo, parse([]), load_config_file(yaml_file)["demo"], prefix="demo-").mode == "b"


@pytest.mark.unit
def test_config_mistakes_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown field 'sise'"):
        from_args(Demo, parse([]), {"sise": 1}, prefix="demo-", where="demo")
    bad = tmp_path / "bad.toml"
    bad.write_text("[demo\n")
    with pytest.raises(UserError, match="bad.toml: cannot parse"):
        load_config_file(bad)
    with pytest.raises(UserError, match="not found"):
        load_config_file(tmp_path / "missing.toml")


@pytest.mark.unit
def test_run_store_refuses_unknown_urls_and_missing_runs(tmp_path):
    with pytest.raises(UserError, match="unknown URL scheme 'nosuch'"):
        RunStore("nosuch://bucket/run")
    with pytest.raises(UserError, match="not a run store"):
        RunStore(tmp_path).read_manifest()
