"""What the verbs of the stages that read a finished run share: RUN, --layer, --config, --json and the
stage config's own flags; and the config built from the file section under the flags given."""

from __future__ import annotations

import argparse

from ..configs import add_dataclass_arguments, from_args, load_config_file


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def add_stage_verb(sub, name: str, help: str, description: str, config: type, section: str,
                   *, skip: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=description,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run directory or object-store URL")
    p.add_argument("--layer", dest="layers", type=int_list, default=None, metavar="L[,L...]", help="alias of --layers")
    p.add_argument("--config", default=None, help=f"TOML/YAML config file; its [{section}] section sets defaults")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_dataclass_arguments(p, config, skip=skip)
    return p


def stage_config(args: argparse.Namespace, config: type, section: str):
    """The stage's config: the file's section under the flags the user passed (errors name either)."""
    file = load_config_file(args.config)
    return from_args(config, args, file.section(section), where=file.where(section))
