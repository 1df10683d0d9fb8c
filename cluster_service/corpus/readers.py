"""Corpus readers: one sentence string at a time, so a large file is never held in memory.

Every problem with the input becomes a ``UserError`` that names the file and the line (text,
JSONL: 1-based line numbers, as an editor shows them) or the row (Parquet: 0-based row index).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UserError

FORMATS = ("text", "jsonl", "parquet")
_SUFFIX_FORMATS = {".txt": "text", ".text": "text", ".jsonl": "jsonl", ".parquet": "parquet"}
_PARQUET_BATCH = 65_536


def resolve_format(path: Path, fmt: str) -> str:
    """The format named in the config, or the one the suffix names (``.gz`` is looked through)."""
    if fmt != "auto":
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    found = _SUFFIX_FORMATS.get(suffixes[-1]) if suffixes else None
    if found is None:
        raise UserError(f"{path}: cannot tell the corpus format from the suffix; use .txt, .jsonl or "
                        ".parquet (optionally .gz) or pass --format text|jsonl|parquet")
    return found


def is_gzip(path: Path) -> bool:
    """Gzip is detected from the magic bytes, so a misnamed file is still read correctly."""
    with path.open("rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def check_file(path: Path) -> None:
    if not path.exists():
        raise UserError(f"{path}: corpus file not found")
    if not path.is_file():
        raise UserError(f"{path}: corpus path is not a file")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _open_binary(path: Path) -> Iterator[IO[bytes]]:
    with path.open("rb") as raw:
        if is_gzip(path):
            with gzip.GzipFile(fileobj=raw) as gz:
                yield io.BufferedReader(gz, buffer_size=1 << 20)  # type: ignore[arg-type]
        else:
            yield raw


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Decoded lines with their 1-based numbers; line endings and a leading BOM removed."""
    try:
        with _open_binary(path) as fh:
            for number, raw in enumerate(fh, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise UserError(f"{path}:{number}: line {number} is not valid UTF-8 "
                                    f"(byte 0x{raw[exc.start]:02x} at byte offset {exc.start})") from None
                if number == 1 and line.startswith("\ufeff"):
                    line = line[1:]
                yield number, line.rstrip("\r\n")
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise UserError(f"{path}: corrupt or truncated gzip data: {exc}") from None


def read_text(path: Path) -> Iterator[str]:
    for _, line in _lines(path):
        yield line


def read_jsonl(path: Path, field: str) -> Iterator[str]:
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: invalid JSON on line {number}: {exc.msg} "
                            f"(column {exc.colno})") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{number}: line {number} is a JSON {type(record).__name__}, "
                            f"expected an object with field '{field}'")
        if field not in record:
            known = ", ".join(sorted(record)[:20]) or "none"
            raise UserError(f"{path}:{number}: field '{field}' missing on line {number} "
                            f"(fields there: {known}); choose one with --field")
        value = record[field]
        if not isinstance(value, str):
            raise UserError(f"{path}:{number}: field '{field}' on line {number} is "
                            f"{'null' if value is None else type(value).__name__}, expected a string")
        yield value


@contextmanager
def _seekable_parquet(path: Path) -> Iterator[Path | IO[bytes]]:
    """Parquet needs random access: a gzipped file is unpacked to a temporary file, not to memory."""
    if not is_gzip(path):
        yield path
        return
    with tempfile.TemporaryFile(suffix=".parquet") as tmp:
        try:
            with gzip.open(path, "rb") as gz:
                shutil.copyfileobj(gz, tmp, 1 << 20)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise UserError(f"{path}: corrupt or truncated gzip data: {exc}") from None
        tmp.seek(0)
        yield tmp


def read_parquet(path: Path, column: str) -> Iterator[str]:
    with _seekable_parquet(path) as source:
        try:
            pfile = pq.ParquetFile(source)
        except (pa.ArrowException, OSError) as exc:
            raise UserError(f"{path}: not a readable Parquet file: {exc}") from None
        schema = pfile.schema_arrow
        if column not in schema.names:
            raise UserError(f"{path}: column '{column}' not found; columns: {', '.join(schema.names)}; "
                            "choose one with --field")
        col_type = schema.field(column).type
        if pa.types.is_dictionary(col_type):
            col_type = col_type.value_type
        if not (pa.types.is_string(col_type) or pa.types.is_large_string(col_type)):
            raise UserError(f"{path}: column '{column}' has type {col_type}, expected a string column")
        start = 0
        for batch in pfile.iter_batches(batch_size=_PARQUET_BATCH, columns=[column]):
            values = batch.column(0)
            if values.null_count:
                first = values.is_null().to_pylist().index(True)
                raise UserError(f"{path}: column '{column}' is null at row index {start + first}, "
                                "expected a string")
            yield from values.to_pylist()
            start += len(values)


def read_sentences(path: Path, fmt: str, field: str) -> Iterator[str]:
    """Raw sentence strings in file order; ``fmt`` is already resolved (text, jsonl or parquet)."""
    check_file(path)
    if fmt == "text":
        return read_text(path)
    if fmt == "jsonl":
        return read_jsonl(path, field)
    if fmt == "parquet":
        return read_parquet(path, field)
    raise UserError(f"{path}: unknown corpus format '{fmt}'; known: {', '.join(FORMATS)}")
