"""`cluster-service concepts RUN --text "..." [--text ...] | --file FILE [--layers ...] [--k K]`: the concept
of every word of new text, offline (no Ray, no Serve): prints the JSON body POST /v1/concepts of
`cluster-service serve` returns for the same texts, for scripts and tests.

Each --text (or each non-empty line of --file) is one text: word-tokenized as the run's ingest did, its
vectors computed as extract did, each vector looked up in the concept index of every asked layer at K
(the largest served K unless --k names one).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..configs import add_dataclass_arguments
from ..errors import UserError
from ..serve.config import ServeConfig
from .stage_verb import int_list, stage_config

#: fields of ServeConfig that only the HTTP service has
SERVICE_ONLY = ("host", "port", "address", "api_key_env", "app_name", "route_prefix", "max_ongoing_requests",
                "batch_size", "batch_wait_s", "model_replicas", "access_log")


def register(sub) -> None:
    p = sub.add_parser("concepts", help="print the concepts of new text's words as JSON (offline, no server)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run directory or object-store URL")
    p.add_argument("--text", action="append", default=None, help="a text (repeat for several)")
    p.add_argument("--file", default=None, help="a UTF-8 file of texts, one per non-empty line")
    p.add_argument("--layer", dest="layers", type=int_list, default=None, metavar="L[,L...]", help="alias of --layers")
    p.add_argument("--config", default=None, help="TOML/YAML config file; its [serve] section sets defaults")
    p.add_argument("--indent", type=int, default=None, help="indent the JSON by this many spaces (default: one line)")
    add_dataclass_arguments(p, ServeConfig, skip=SERVICE_ONLY)
    p.set_defaults(func=main)


def read_texts(args: argparse.Namespace) -> list[str]:
    if bool(args.text) == bool(args.file):
        raise UserError("concepts: give --text (one or more) or --file, not both and not neither")
    if args.text:
        return args.text
    path = Path(args.file)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise UserError(f"{path}: no non-empty line")
    return texts


def main(args: argparse.Namespace) -> int:
    from ..serve.schema import RequestError
    from ..serve.service import Front, LocalService
    from ..store import RunStore

    texts = read_texts(args)
    cfg = stage_config(args, ServeConfig, "serve")
    body = {"text": texts[0] if len(texts) == 1 else texts}
    if cfg.k:
        body["k"] = max(cfg.k)
    store = RunStore(args.run)
    try:
        Front.of(store, cfg).prepare(body)  # a bad text is said before the model loads
        answer = LocalService(store, cfg).answer(body)
    except RequestError as exc:
        raise UserError(f"{'--file ' + args.file if args.file else '--text'}: {exc}") from None
    print(json.dumps(answer, indent=args.indent, ensure_ascii=False))
    return 0
