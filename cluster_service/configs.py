"""Dataclass configs that double as command-line flags.

Every stage has one dataclass config. The docstring written under each field (as in delphi and
simple_parsing) becomes that flag's ``--help`` text, so the documentation lives next to the default
and cannot drift. Values come from, in rising priority: the dataclass default, a TOML/YAML config
file section, and explicit command-line flags.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import UserError

T = TypeVar("T")


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (a string literal right under a field) of a dataclass and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _base_type(tp: Any) -> tuple[Any, bool]:
    """Strip Optional[...] and report whether None was allowed."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse_list(item_type: type):
    def parse(text: str) -> list:
        if text.strip() in ("", "all"):
            return []
        return [item_type(part) for part in text.split(",") if part.strip()]

    parse.__name__ = f"comma-separated {item_type.__name__}s"
    return parse


def add_dataclass_arguments(
    parser: argparse.ArgumentParser, cls: type, *, prefix: str = "", skip: tuple[str, ...] = ()
) -> None:
    """Add one ``--flag`` per field of ``cls``; defaults are left as None so a config file can fill them."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__, (cls.__doc__ or "").strip().split("\n")[0])
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        flag = "--" + prefix + f.name.replace("_", "-")
        tp, _ = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        )
        help_text = docs.get(f.name, "").replace("%", "%%")  # argparse formats help with %
        shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else default
        help_text = f"{help_text} (default: {shown})" if help_text else f"(default: {shown})"
        dest = prefix.replace("-", "_") + f.name
        if tp is bool:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        elif typing.get_origin(tp) in (list, tuple):
            (item,) = typing.get_args(tp)[:1]
            group.add_argument(flag, dest=dest, type=_parse_list(item), default=None, metavar="LIST",
                               help=help_text)
        elif typing.get_origin(tp) is typing.Literal:
            choices = typing.get_args(tp)
            group.add_argument(flag, dest=dest, choices=choices, default=None, help=help_text)
        else:
            group.add_argument(flag, dest=dest, type=tp if tp in (int, float, str) else str, default=None,
                               metavar=f.name.upper(), help=help_text)


def build(cls: type[T], *sources: dict[str, Any] | None, where: str = "config") -> T:
    """Make ``cls`` from dicts layered left to right (later wins); unknown keys are a user error."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for src in sources:
        for key, value in (src or {}).items():
            key = key.replace("-", "_")
            if key not in names:
                raise UserError(f"{where}: unknown field '{key}' for {cls.__name__}; "
                                f"known: {', '.join(sorted(names))}")
            if value is not None:
                values[key] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: {exc}") from None


def from_args(cls: type[T], args: argparse.Namespace, file_section: dict[str, Any] | None = None,
              *, prefix: str = "", where: str = "config") -> T:
    """Layer a config-file section under the flags the user actually passed."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    flags = {n: getattr(args, prefix.replace("-", "_") + n, None) for n in names}
    return build(cls, file_section, {k: v for k, v in flags.items() if v is not None}, where=where)


def load_config_file(path: str | Path | None) -> dict[str, Any]:
    """Read a TOML or YAML file of sections (``[extract]``, ``[cluster]`` ...)."""
    if not path:
        return {}
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        raise UserError(f"{path}: cannot parse config: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: top level must be a table of sections")
    return data


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
