"""Prompts that turn a concept into chat messages, and the parsing of the replies.

The default is the prompt of Mousi, Durrani & Dalvi (2023), verbatim, with the concept's tokens
(duplicates kept) as a Python list, because labels are only comparable with the paper's when the
prompt is the same. The variants add context, steer towards form rather than meaning, or ask for a
validated JSON object whose raw text is kept next to the parsed fields.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PAPER_SYSTEM = (
    "Assistant is a large language model trained by OpenAI. Instructions: When asked for labels, "
    "only the labels and nothing else should be returned."
)
PAPER_USER = "Give a short and concise label that best describes the following list of words: "
LEXICAL_USER = (
    "Give a short and concise label that describes the following list of words by what they share in "
    "form or grammar (part of speech, morphology, spelling or casing pattern), not by their meaning: "
)
JSON_SYSTEM = (
    "Assistant is a large language model. Instructions: reply with exactly one JSON object and nothing else."
)
JSON_USER = (
    "Describe the concept formed by the following list of words. Reply with a JSON object with the keys "
    '"label" (a short and concise label), "description" (one sentence) and "type" (one of "semantic", '
    '"lexical", "morphological", "syntactic", "uninterpretable"). Words: '
)
LABEL_TYPES = ("semantic", "lexical", "morphological", "syntactic", "uninterpretable")
MAX_LABEL_CHARS = 200

Messages = list[dict[str, str]]


def word_list(words: Sequence[str]) -> str:
    """The list as the paper's code put it into the prompt: a Python list literal."""
    return str(list(words))


def mark_word(sentence: str, position: int, word: str) -> str:
    """Wrap the occurrence in [[ ]]: at its word position when the whitespace split agrees, else the
    first whole-word match, else name the word after the sentence."""
    parts = sentence.split()
    if 0 <= position < len(parts) and word in parts[position]:
        parts[position] = parts[position].replace(word, f"[[{word}]]", 1)
        return " ".join(parts)
    match = re.search(rf"(?<!\w){re.escape(word)}(?!\w)", sentence)
    if match:
        return f"{sentence[: match.start()]}[[{word}]]{sentence[match.end():]}"
    return f"{sentence} [[{word}]]"


def build_messages(kind: str, words: Sequence[str], examples: Sequence[dict[str, Any]] = (),
                   n_context: int = 3) -> Messages:
    """Chat messages for one concept with prompt ``kind`` (paper / context / lexical / json)."""
    listed = word_list(words)
    if kind == "paper":
        return [{"role": "system", "content": PAPER_SYSTEM}, {"role": "user", "content": PAPER_USER + listed}]
    if kind == "context":
        lines = [f"{i}. {mark_word(ex['sentence'], int(ex['position']), ex['word'])}"
                 for i, ex in enumerate(list(examples)[:n_context], start=1)]
        user = PAPER_USER + listed
        if lines:
            user += "\n\nSome of the words in context (the word is marked with [[ ]]):\n" + "\n".join(lines)
        return [{"role": "system", "content": PAPER_SYSTEM}, {"role": "user", "content": user}]
    if kind == "lexical":
        return [{"role": "system", "content": PAPER_SYSTEM},
                {"role": "user", "content": LEXICAL_USER + listed}]
    if kind == "json":
        return [{"role": "system", "content": JSON_SYSTEM}, {"role": "user", "content": JSON_USER + listed}]
    raise ValueError(f"unknown prompt kind {kind!r}")


HIERARCHY_NOTE = "\n\nThese words are a sample of a concept made of smaller concepts, already labelled: "


def hierarchy_messages(kind: str, words: Sequence[str], child_labels: Sequence[str],
                       examples: Sequence[dict[str, Any]] = (), n_context: int = 3) -> Messages:
    """The ``kind`` prompt over a sample of the concept's words, followed by its children's labels: how
    a concept at a smaller K is labelled from the labels below it (``--hierarchy``)."""
    messages = build_messages(kind, words, examples, n_context)
    messages[-1] = {**messages[-1], "content": messages[-1]["content"] + HIERARCHY_NOTE + word_list(child_labels)}
    return messages


@dataclass(frozen=True)
class ParsedLabel:
    label: str
    description: str | None = None
    type: str | None = None


class ReplyError(ValueError):
    """A reply that arrived but does not carry a usable label (the raw text is kept by the caller)."""


_PREFIX = re.compile(r"^\s*(label|concept)\s*:\s*", re.IGNORECASE)
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.IGNORECASE)


def clean_label(raw: str) -> str:
    """First non-empty line, without a 'Label:' prefix, surrounding quotes or a final full stop."""
    lines = [ln.strip() for ln in raw.strip().splitlines() if ln.strip()]
    if not lines:
        raise ReplyError("empty reply")
    label = _PREFIX.sub("", lines[0]).strip()
    label = label[:-1] if label.endswith(".") else label
    label = label.strip().strip("\"'`*").strip()
    if not label:
        raise ReplyError("empty label")
    return label[:MAX_LABEL_CHARS]


def parse_structured(raw: str) -> ParsedLabel:
    """Validate a JSON reply against the schema {label: str, description: str, type: one of LABEL_TYPES}."""
    text = _FENCE.sub("", raw.strip()).strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReplyError(f"reply is not JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(obj, dict):
        raise ReplyError(f"reply JSON is a {type(obj).__name__}, not an object")
    missing = [key for key in ("label", "description", "type") if key not in obj]
    if missing:
        raise ReplyError(f"reply JSON lacks {', '.join(missing)}")
    label, description, kind = obj["label"], obj["description"], obj["type"]
    if not isinstance(label, str) or not label.strip():
        raise ReplyError("reply JSON 'label' is not a non-empty string")
    if not isinstance(description, str):
        raise ReplyError("reply JSON 'description' is not a string")
    if not isinstance(kind, str) or kind.strip().lower() not in LABEL_TYPES:
        raise ReplyError(f"reply JSON 'type' {kind!r} is not one of {', '.join(LABEL_TYPES)}")
    return ParsedLabel(label.strip()[:MAX_LABEL_CHARS], description.strip(), kind.strip().lower())


def parse_reply(kind: str, raw: str) -> ParsedLabel:
    return parse_structured(raw) if kind == "json" else ParsedLabel(clean_label(raw))
