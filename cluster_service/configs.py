"""Dataclass configs that double as command-line flags.

Every stage has one dataclass config. The docstring written under each field (as in delphi and
simple_parsing) becomes that flag's ``--help`` text, so the documentation lives next to the default
and cannot drift. Values come from, in rising priority: the dataclass default, a TOML/YAML config
file section, and explicit command-line flags.

Every value, from a file or a flag, is checked against its field's type hint before the dataclass is
built: the type itself, ``Literal`` choices, and numeric bounds written as ``Annotated[int, Range(min=1)]``.
argparse checks flags' types and choices, but nothing checked a file's values, so ``pooling = "max"``
used to be recorded and silently ignored. A wrong value is one ``UserError`` naming the file, the
section and the field (or the flag).
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
from typing import Annotated, Any, TypeVar

from .errors import UserError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed interval of a numeric field (``Annotated[int, Range(min=1)]``); ``above`` is exclusive."""

    min: float | None = None
    max: float | None = None
    above: float | None = None

    def problem(self, value: float) -> str | None:
        if self.min is not None and value < self.min:
            return f"must be >= {self.min:g}, got {value!r}"
        if self.above is not None and value <= self.above:
            return f"must be > {self.above:g}, got {value!r}"
        if self.max is not None and value > self.max:
            return f"must be <= {self.max:g}, got {value!r}"
        return None

    def __str__(self) -> str:
        parts = [f">= {self.min:g}" if self.min is not None else "", f"> {self.above:g}" if self.above is not None
                 else "", f"<= {self.max:g}" if self.max is not None else ""]
        return " and ".join(p for p in parts if p)


#: shorthands for the bounds most fields need
Positive = Range(above=0)
NonNegative = Range(min=0)
AtLeastOne = Range(min=1)

PositiveInt = Annotated[int, AtLeastOne]
NonNegativeInt = Annotated[int, NonNegative]
PositiveFloat = Annotated[float, Positive]
NonNegativeFloat = Annotated[float, NonNegative]


class BadValue(Exception):
    """A value that does not fit its field's hint (internal: becomes a UserError with its location)."""


def _split_annotated(tp: Any) -> tuple[Any, list[Range]]:
    if typing.get_origin(tp) is Annotated:
        base, *extras = typing.get_args(tp)
        return base, [e for e in extras if isinstance(e, Range)]
    return tp, []


def check_value(tp: Any, value: Any) -> Any:
    """``value`` as field type ``tp`` wants it (ints become floats for float fields), or ``BadValue``."""
    tp, ranges = _split_annotated(tp)
    tp, optional = _base_type(tp)
    tp, more = _split_annotated(tp)
    ranges += more
    if value is None:
        if optional:
            return None
        raise BadValue("must not be empty")
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices):
            raise BadValue(f"{value!r} is not one of {', '.join(map(repr, choices))}")
    elif origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise BadValue(f"expected a list, got {value!r}")
        item = typing.get_args(tp)[0]
        checked = []
        for i, v in enumerate(value):
            try:
                checked.append(check_value(item, v))
            except BadValue as exc:
                raise BadValue(f"item {i}: {exc}") from None
        value = tuple(checked) if origin is tuple else checked
    elif tp is bool:
        if not isinstance(value, bool):
            raise BadValue(f"expected true or false, got {value!r}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadValue(f"expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadValue(f"expected a number, got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise BadValue(f"expected a string, got {value!r}")
    for r in ranges:
        problem = r.problem(value)
        if problem:
            raise BadValue(problem)
    return value


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
    extras = typing.get_type_hints(cls, include_extras=True)
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
        bounds = "; ".join(str(r) for r in _split_annotated(extras[f.name])[1])
        shown = f"{shown}; {bounds}" if bounds else shown
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


def build(cls: type[T], *sources: dict[str, Any] | None, where: str = "config",
          flags: dict[str, Any] | None = None, flag_prefix: str = "") -> T:
    """Make ``cls`` from dicts layered left to right (later wins), then ``flags`` (parsed command-line
    values, named ``--{flag_prefix}{field}`` in messages). Every value is checked against its field's
    hint; an unknown key or a wrong value is a ``UserError`` that names ``where`` and the field."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls, include_extras=True)
    values: dict[str, Any] = {}
    layers = [(where, src, False) for src in sources] + [("command line", flags, True)]
    for label, src, is_flag in layers:
        for key, value in (src or {}).items():
            key = key.replace("-", "_")
            if key not in names:
                raise UserError(f"{label}: unknown field '{key}' for {cls.__name__}; "
                                f"known: {', '.join(sorted(names))}")
            if value is None:
                continue
            try:
                values[key] = check_value(hints[key], value)
            except BadValue as exc:
                name = f"--{flag_prefix}{key.replace('_', '-')}" if is_flag else f"{label} {key}"
                raise UserError(f"{name}: {exc}") from None
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: {exc}") from None


def from_args(cls: type[T], args: argparse.Namespace, file_section: dict[str, Any] | None = None,
              *, prefix: str = "", where: str = "config") -> T:
    """Layer a config-file section under the flags the user actually passed."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    flags = {n: getattr(args, prefix.replace("-", "_") + n, None) for n in names}
    return build(cls, file_section, where=where, flags={k: v for k, v in flags.items() if v is not None},
                 flag_prefix=prefix)


class ConfigFile(dict):
    """A config file's sections (``[extract]``, ``[cluster]`` ...), remembering the file for messages."""

    def __init__(self, data: dict[str, Any] | None = None, path: Path | None = None):
        super().__init__(data or {})
        self.path = path

    def where(self, section: str) -> str:
        """How messages name a section: ``job.toml [extract]`` (or ``[extract]`` with no file)."""
        return f"{self.path} [{section}]" if self.path else f"[{section}]"

    def section(self, name: str) -> dict[str, Any]:
        """One section's fields (empty when absent); a section that is not a table is a user error."""
        value = self.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise UserError(f"{self.where(name)}: must be a table of fields, got {value!r}")
        return value

    def check_sections(self, known: tuple[str, ...]) -> None:
        """A misspelt section (``[extrct]``) would otherwise be ignored without a word."""
        for name in self:
            if name not in known:
                raise UserError(f"{self.path}: unknown section [{name}]; known: {', '.join(known)}")


def load_config_file(path: str | Path | None) -> ConfigFile:
    """Read a TOML or YAML file of sections (``[extract]``, ``[cluster]`` ...)."""
    if not path:
        return ConfigFile()
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
    return ConfigFile(data, path)
