"""Word tokenization: sentence strings in, tokenized sentences (words joined by one space) out.

Moses (sacremoses, English, ``escape=False`` as ConceptX runs tokenizer.perl ``-no-escape``) runs at
roughly 20K short sentences/s on one core, so a corpus of a million sentences takes about a minute;
large corpora are tokenized by a process pool over chunks, in order, so the output is the same as
in one process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import lru_cache, partial
from itertools import chain
from pathlib import Path

import pyarrow as pa

from ..logs import log_event

logger = logging.getLogger("cluster_service.corpus")

#: Sentences per unit of pool work: large enough that pickling is a small cost.
CHUNK_SENTENCES = 10_000
#: A corpus that fits in this many chunks is tokenized in-process. Spawned workers take ~1 s to start
#: (they import pyarrow and sacremoses); on 2 cores the 42.5K-sentence demo was 1.5x slower with a
#: pool, and 1M sentences 1.7x faster.
POOL_MIN_CHUNKS = 10


def tokenizer_version(kind: str) -> str:
    """Part of the corpus fingerprint: another Moses release may split words differently."""
    if kind == "moses":
        import sacremoses

        return f"sacremoses-{getattr(sacremoses, '__version__', 'unknown')}"
    return kind


@lru_cache(maxsize=2)
def _moses():
    from sacremoses import MosesTokenizer

    return MosesTokenizer(lang="en")


def tokenize_texts(texts: list[str], kind: str, lowercase: bool) -> pa.StringArray:
    """Tokenized sentences, words joined by single spaces ('' when a sentence has no word).

    ``str.split()`` runs after Moses too: it splits on every Unicode space, so no word ever holds a
    space and ``text.split(" ")`` gives the words back exactly.
    """
    if kind == "moses":
        moses = _moses()
        words_of = (moses.tokenize(t, escape=False) for t in texts)
        joined = (" ".join(w for word in words for w in word.split()) for words in words_of)
    elif kind == "whitespace":
        joined = (" ".join(t.split()) for t in texts)
    else:
        raise ValueError(f"unknown tokenizer {kind!r}")
    if lowercase:
        joined = (t.lower() for t in joined)
    return pa.array(list(joined), type=pa.string())


def chunked(items: Iterable[str], size: int = CHUNK_SENTENCES) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _main_is_importable() -> bool:
    """Spawned workers re-import the parent's ``__main__`` from its file; a script fed on stdin
    (``python -``) has none to import, so the pool could not start."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or Path(main_file).is_file()


def tokenize_chunks(chunks: Iterable[list[str]], kind: str, lowercase: bool,
                    workers: int | None = None) -> Iterator[pa.StringArray]:
    """Tokenize chunk by chunk, in order.

    A process pool is used only for Moses, when the corpus is larger than ``POOL_MIN_CHUNKS`` chunks
    and there are several CPUs. Workers are spawned (a fork beside Ray's or torch's threads can deadlock);
    at most two chunks per worker are in flight, so the file is read as fast as it is tokenized, not
    ahead. If the pool cannot run (a ``__main__`` without an ``if __name__ == "__main__"`` guard),
    the rest is tokenized in this process: same output, just slower.
    """
    work = partial(tokenize_texts, kind=kind, lowercase=lowercase)
    workers = available_cpus() if workers is None else workers
    stream = iter(chunks)
    head = [c for _, c in zip(range(POOL_MIN_CHUNKS + 1), stream, strict=False)]
    # whitespace splitting costs less than shipping a chunk to a worker and back: 4x faster in-process
    if kind == "whitespace" or workers < 2 or len(head) <= POOL_MIN_CHUNKS or not _main_is_importable():
        for chunk in chain(head, stream):
            yield work(chunk)
        return
    source = chain(head, stream)
    # chunks taken from the source and not yet yielded, and their futures (one fewer if submit failed)
    pending: deque[list[str]] = deque()
    futures: deque[Future] = deque()
    log_event(logger, "tokenizer pool started", workers=workers)
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for chunk in source:
                pending.append(chunk)
                futures.append(pool.submit(work, chunk))
                if len(futures) >= 2 * workers:
                    yield futures[0].result()
                    futures.popleft()
                    pending.popleft()
            while futures:
                yield futures[0].result()
                futures.popleft()
                pending.popleft()
    except BrokenProcessPool:
        log_event(logger, "tokenizer pool failed; tokenizing in this process", logging.WARNING,
                  workers=workers)
        for chunk in chain(pending, source):
            yield work(chunk)
