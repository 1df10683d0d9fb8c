"""The HTTP API's request checks and body shapes, shared by the Serve app and the offline `concepts` verb.

Requests are checked here by hand, not by a framework's validator: every mistake becomes one
``RequestError`` with a status and a one-line message that names the field (``layers[1]: ...``), the
same text whether it came over HTTP (``{"error": ..., "field": ...}``) or from the command line
(``error: ...``). The pydantic models below only document the bodies in the OpenAPI schema.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field


class RequestError(Exception):
    """A request the service refuses: HTTP ``status`` and the field at fault."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.status, self.field = status, field

    def body(self) -> dict[str, str]:
        return {"error": str(self), "field": self.field}


@dataclass(frozen=True)
class Limits:
    max_chars: int
    max_words: int
    max_texts: int


@dataclass(frozen=True)
class Query:
    """A checked POST /v1/concepts: texts, the layers and the K to answer at."""

    texts: list[str]
    layers: list[int]
    k: int


def _type(value: Any) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)


def _int_field(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(422, name, f"must be an integer, got {_type(value)}")
    return value


def parse_body(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise RequestError(400, "body", f"invalid JSON{where}: {reason}") from None


def check_query(body: Any, served: dict[int, list[int]], limits: Limits) -> Query:
    """``body`` (parsed JSON) as a Query, or the first RequestError. ``served`` maps K to its layers."""
    if not isinstance(body, dict):
        raise RequestError(422, "body", f"must be a JSON object, got {_type(body)}")
    unknown = sorted(set(body) - {"text", "layers", "k"})
    if unknown:
        raise RequestError(422, unknown[0], "unknown field (known: text, layers, k)")
    if "text" not in body:
        raise RequestError(422, "text", "required (a string, or a list of strings)")
    text = body["text"]
    if isinstance(text, str):
        texts, names = [text], ["text"]
    elif isinstance(text, list):
        if not text:
            raise RequestError(422, "text", "empty list")
        if len(text) > limits.max_texts:
            raise RequestError(413, "text", f"{len(text)} texts, over the limit of {limits.max_texts} per request")
        texts, names = text, [f"text[{i}]" for i in range(len(text))]
    else:
        raise RequestError(422, "text", f"must be a string or a list of strings, got {_type(text)}")
    chars = 0
    for name, t in zip(names, texts, strict=True):
        if not isinstance(t, str):
            raise RequestError(422, name, f"must be a string, got {_type(t)}")
        if not t.strip():
            raise RequestError(422, name, "empty")
        chars += len(t)
        if chars > limits.max_chars:
            raise RequestError(413, name, f"texts over the limit of {limits.max_chars} characters per request")
    k = body.get("k")
    if k is None:
        k = max(served)
    k = _int_field("k", k)
    if k not in served:
        raise RequestError(400, "k", f"{k} is not served (served: {', '.join(map(str, sorted(served)))})")
    layers = body.get("layers")
    if layers is None:
        layers = served[k]
    elif not isinstance(layers, list):
        raise RequestError(422, "layers", f"must be a list of integers, got {_type(layers)}")
    elif not layers:
        raise RequestError(422, "layers", "empty list (leave it out for every served layer)")
    for i, layer in enumerate(layers):
        _int_field(f"layers[{i}]", layer)
        if layer not in served[k]:
            raise RequestError(400, f"layers[{i}]", f"layer {layer} is not served at k={k} "
                               f"(served: {', '.join(map(str, served[k]))})")
    return Query(texts=list(texts), layers=sorted(set(layers)), k=k)


def check_words(query: Query, tokenized: list[str], limits: Limits) -> None:
    """After word tokenization: no text without a word, no more words than the limit."""
    total = 0
    for i, words in enumerate(tokenized):
        name = "text" if len(tokenized) == 1 else f"text[{i}]"
        if not words:
            raise RequestError(422, name, "has no word after word tokenization")
        total += words.count(" ") + 1
    if total > limits.max_words:
        raise RequestError(413, "text", f"{total} words, over the limit of {limits.max_words} per request")


# --- the bodies, for the OpenAPI schema -------------------------------------------------------------


class ConceptsRequest(BaseModel):
    """POST /v1/concepts."""

    text: str | list[str] = Field(description="One text (a sentence), or a list of them; each is word-"
                                  "tokenized as the run's ingest did and read by the model as one context.")
    layers: list[int] | None = Field(None, description="Layers to answer at; every served layer if left out.")
    k: int | None = Field(None, description="Number of concepts (K) of the clustering; the largest served if "
                          "left out.")


class WordConcept(BaseModel):
    layer: int
    concept: int
    label: str | None
    distance: float = Field(description="Euclidean distance to the nearest voting member (knn) or to the "
                            "micro-centroid (micro).")
    confidence: float = Field(description="Share of the nearest neighbours that voted for the concept (1 for micro "
                              "and stored).")
    via: str = Field(description="stored (the vector is a stored token's: the concept the run gave it), knn (the "
                     "neighbours' vote), micro (the nearest micro-centroid's concept) or centroid (the nearest "
                     "concept centroid).")


class WordResult(BaseModel):
    word: str
    concepts: list[WordConcept]


class TextResult(BaseModel):
    text: str
    words: list[WordResult]


class ConceptsResponse(BaseModel):
    model: str
    k: int
    layers: list[int]
    results: list[TextResult]


class TopWord(BaseModel):
    word: str
    count: int


class Example(BaseModel):
    word: str
    position: int
    sentence: str


class ConceptResponse(BaseModel):
    layer: int
    k: int
    concept: int
    label: str | None
    label_status: str | None
    size: int
    top_words: list[TopWord]
    examples: list[Example]
    parent: int | None
    children: list[int]


class IndexInfo(BaseModel):
    layer: int
    k: int
    index: str = Field(description="knn (vote over stored token vectors), micro (nearest micro-centroid) or centroid "
                       "(nearest concept centroid).")
    rows: int
    neighbors: int
    concepts: int
    match_tolerance: float


class RunResponse(BaseModel):
    run: str
    model: str
    layers: list[int]
    k: list[int]
    indexes: list[IndexInfo]
    limits: dict[str, int]


class ErrorResponse(BaseModel):
    error: str = Field(description="One line naming the field and what is wrong with it.")
    field: str
