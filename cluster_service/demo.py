"""The demo corpus: WordNet 3.0's example sentences, fetched from Debian's ``wordnet-base`` package.

Why WordNet: it is real, edited English (≈ 45K quoted usage examples across nouns, verbs, adjectives
and adverbs), under a permissive licence, reachable from a package registry (Debian), and each
synset carries a human-made semantic class (noun.animal, verb.motion ...) that later analysis can
use. ``apt-get download`` needs no root-wide install; the .deb is unpacked with ``dpkg -x``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .errors import UserError

WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_QUOTED = re.compile(r'"([^"]+)"')


def data_dir() -> Path:
    """Where fetched data lives: $CLUSTER_SERVICE_DATA, else ./data."""
    return Path(os.environ.get("CLUSTER_SERVICE_DATA", "data")).resolve()


def demo_corpus_path() -> Path:
    return data_dir() / "demo" / "wordnet_examples.txt"


def parse_wordnet_examples(wordnet_dir: Path) -> list[str]:
    """Quoted example sentences from WordNet ``data.*`` glosses, deduplicated, in file order."""
    seen: set[str] = set()
    out: list[str] = []
    for name in WORDNET_FILES:
        for line in (wordnet_dir / name).read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or "|" not in line:  # licence header
                continue
            gloss = line.split("|", 1)[1]
            for quote in _QUOTED.findall(gloss):
                sentence = " ".join(quote.split())
                if len(sentence.split()) >= 3 and sentence not in seen:
                    seen.add(sentence)
                    out.append(sentence)
    return out


def fetch_demo_corpus(force: bool = False) -> Path:
    """Download and unpack wordnet-base, write one sentence per line; a no-op when already there."""
    target = demo_corpus_path()
    if target.is_file() and not force:
        return target
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise UserError("the demo corpus comes from Debian's wordnet-base package and needs apt-get and dpkg; "
                        "pass your own corpus with --corpus instead")
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(["apt-get", "download", "wordnet-base"], cwd=tmp, capture_output=True, text=True)
        if result.returncode != 0:
            # an empty package list on a fresh machine: refresh it once and try again
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
            result = subprocess.run(["apt-get", "download", "wordnet-base"], cwd=tmp, capture_output=True,
                                    text=True)
        debs = list(Path(tmp).glob("wordnet-base*.deb"))
        if result.returncode != 0 or not debs:
            raise UserError(f"apt-get download wordnet-base failed: {result.stderr.strip()[-300:]}")
        subprocess.run(["dpkg", "-x", str(debs[0]), str(Path(tmp) / "x")], check=True)
        sentences = parse_wordnet_examples(Path(tmp) / "x" / "usr" / "share" / "wordnet")
        licence = Path(tmp) / "x" / "usr" / "share" / "doc" / "wordnet-base" / "copyright"
        target.parent.mkdir(parents=True, exist_ok=True)
        if licence.is_file():
            shutil.copy(licence, target.parent / "WORDNET_LICENSE")
    tmp_target = target.with_suffix(".tmp")
    tmp_target.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    tmp_target.replace(target)
    return target


if __name__ == "__main__":
    print(fetch_demo_corpus())
