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


def _literal_fields():
    """Every Literal field of every stage config, with the config file section it lives in."""
    import typing

    from cluster_service.commands.run import SECTIONS

    for section, cls, _ in SECTIONS:
        for name, hint in typing.get_type_hints(cls).items():
            base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Union else hint
            if typing.get_origin(base) is typing.Literal:
                yield section, name


LITERALS = sorted(_literal_fields())


@pytest.mark.unit
def test_every_stage_config_has_literal_fields_to_check():
    sections = {s for s, _ in LITERALS}
    assert {"corpus", "extract", "cluster", "annotate"} <= sections
    assert ("extract", "pooling") in LITERALS and ("cluster", "method") in LITERALS


@pytest.mark.unit
@pytest.mark.parametrize(("section", "name"), LITERALS)
def test_a_bad_literal_in_a_config_file_is_one_error_naming_file_section_field(tmp_path, capsys, section, name):
    from cluster_service.cli import main as cli

    job = tmp_path / "job.toml"
    job.write_text(f'[{section}]\n{name} = "exakt"\n')
    assert cli(["run", str(tmp_path / "run"), "--config", str(job)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {job} [{section}] {name}: 'exakt' is not one of " + err[0].split("is not one of ")[1]]
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.unit
@pytest.mark.parametrize(("text", "message"), [
    ('[extract]\nbatch_tokens = 0\n', "[extract] batch_tokens: must be >= 1, got 0"),
    ('[extract]\nlayers = [0, "six"]\n', "[extract] layers: item 1: expected an integer, got 'six'"),
    ('[corpus]\nlowercase = "yes"\n', "[corpus] lowercase: expected true or false, got 'yes'"),
    ('[cluster]\nk = 50\n', "[cluster] k: expected a list, got 50"),
    ('[extrct]\npooling = "mean"\n', "unknown section [extrct]"),
    ('stages = ["extract", "clusterr"]\n', "stages: unknown stage 'clusterr'"),
    ('[extract]\npoling = "mean"\n', "[extract]: unknown field 'poling'"),
])
def test_wrong_values_in_a_config_file_name_where(tmp_path, capsys, text, message):
    from cluster_service.cli import main as cli

    job = tmp_path / "job.toml"
    job.write_text(text)
    assert cli(["run", str(tmp_path / "run"), "--config", str(job)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and str(job) in err and "\n" not in err


@pytest.mark.unit
def test_flags_are_range_checked_and_named(capsys):
    from cluster_service.cli import main as cli

    assert cli(["run", "/nonexistent/run", "--batch-tokens", "-5"]) == 2
    assert capsys.readouterr().err.strip() == "error: --batch-tokens: must be >= 1, got -5"
    assert cli(["run", "/nonexistent/run", "--corpus-max-sentences", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --corpus-max-sentences: must be >= 0, got -1"
