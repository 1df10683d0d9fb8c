"""The OpenAI-compatible backend: one chat call, and every way it can fail sorted into what to do next.

The ``openai`` client's own retries are off (``max_retries=0``): the pool retries, so that every attempt
passes the rate limiter and is counted. Errors become ``CallError`` with an action: ``retry`` (429,
5xx, timeouts, connection errors, malformed bodies; with the server's Retry-After if it sent one),
``fatal`` (401/403, unknown model, exhausted quota: nothing later can succeed, so the run stops),
``refused`` (content filter) or ``permanent`` (any other 4xx: this concept fails, the rest go on).
The API key is read from the environment here and nowhere else, and scrubbed from every message.
"""

from __future__ import annotations

import email.utils
import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import openai

from ..errors import UserError
from .cache import Reply
from .ratelimit import ServerLimits

RETRY = "retry"
FATAL = "fatal"
REFUSED = "refused"
PERMANENT = "permanent"


def server_limits(headers: Any) -> ServerLimits | None:
    if headers is None:
        return None

    def as_int(name: str) -> int | None:
        try:
            return int(float(headers.get(name)))
        except (TypeError, ValueError):
            return None

    limits = ServerLimits(empty_bucket_pause(headers), as_int("x-ratelimit-limit-requests"),
                          as_int("x-ratelimit-limit-tokens"))
    return limits if limits != ServerLimits() else None


@dataclass
class CallError(Exception):
    action: str
    reason: str
    status: int | None = None
    retry_after: float | None = None
    limits: ServerLimits | None = None

    def __str__(self) -> str:
        return self.reason


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str | None) -> float | None:
    """OpenAI's reset durations ("1s", "6m0s", "20ms", "1.5s") or plain seconds, in seconds."""
    if not text:
        return None
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(v) * scale[u] for v, u in parts)


def retry_after(headers: Any) -> float | None:
    """Seconds the server asks us to wait: retry-after-ms, then retry-after (seconds or HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def empty_bucket_pause(headers: Any) -> float | None:
    """How long the server says its request or token bucket stays empty, from ``x-ratelimit-*``."""
    if headers is None:
        return None
    waits = []
    for kind in ("requests", "tokens"):
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        if remaining is not None and remaining.strip() in ("0", "0.0"):
            waits.append(parse_duration(headers.get(f"x-ratelimit-reset-{kind}")) or 1.0)
    return max(waits) if waits else None


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "[redacted]") if secret else text


class OpenAIBackend:
    name = "openai"

    def __init__(self, base_url: str | None, model: str, api_key_env: str, timeout_s: float):
        key = os.environ.get(api_key_env)
        if not key:
            raise UserError(f"annotate: environment variable {api_key_env} is not set; export the API key "
                            "there (or pass --api-key-env NAME), or use --backend baseline")
        self.model = model
        self.base_url = base_url
        self._key = key
        self.where = base_url or "the OpenAI API"
        self.client = openai.AsyncOpenAI(api_key=key, base_url=base_url, timeout=timeout_s, max_retries=0)

    def _err(self, action: str, reason: str, **kw: Any) -> CallError:
        return CallError(action, redact(reason, self._key), **kw)

    async def complete(self, request: dict[str, Any]) -> tuple[Reply, ServerLimits | None]:
        """One chat completion for ``request`` (messages + parameters), and what the server said about
        its rate limits; raises ``CallError``."""
        start = time.monotonic()
        try:
            raw = await self.client.chat.completions.with_raw_response.create(model=self.model, **request)
            completion = raw.parse()
        except openai.APITimeoutError:
            raise self._err(RETRY, "request timed out") from None
        except openai.APIConnectionError as exc:
            raise self._err(RETRY, f"connection error: {exc.__cause__ or exc}") from None
        except openai.APIStatusError as exc:
            raise self._classify(exc) from None
        except (json.JSONDecodeError, ValueError, openai.APIResponseValidationError) as exc:
            raise self._err(RETRY, f"malformed response body: {exc}") from None
        latency = time.monotonic() - start
        choices = getattr(completion, "choices", None)
        if not choices:
            raise self._err(RETRY, "malformed response: no choices")
        choice = choices[0]
        message = getattr(choice, "message", None)
        content = getattr(message, "content", None)
        if content is None and choice.finish_reason != "content_filter":
            raise self._err(RETRY, f"malformed response: no content (finish_reason {choice.finish_reason})")
        usage = getattr(completion, "usage", None)
        reply = Reply(content, choice.finish_reason, getattr(completion, "model", None),
                      int(getattr(usage, "prompt_tokens", 0) or 0),
                      int(getattr(usage, "completion_tokens", 0) or 0), latency)
        return reply, server_limits(raw.headers)

    def _classify(self, exc: openai.APIStatusError) -> CallError:
        status = exc.status_code
        code = (exc.code or "").lower()
        headers = exc.response.headers if exc.response is not None else None
        server_msg = ""
        if isinstance(exc.body, dict):
            server_msg = str(exc.body.get("message", ""))[:200]
        if status in (401, 403):
            what = "rejected the API key" if status == 401 else "refused access"
            return self._err(FATAL, f"{self.where} {what} (HTTP {status}); check the key in the "
                                    f"environment variable named by --api-key-env", status=status)
        if status == 404:
            return self._err(FATAL, f"{self.where} answered 404 for model '{self.model}' "
                                    f"({code or 'not found'}); check --model and --base-url", status=status)
        if status == 429 and code == "insufficient_quota":
            return self._err(FATAL, f"{self.where}: quota exhausted (HTTP 429 insufficient_quota)",
                             status=status)
        if status == 400 and ("content_filter" in code or "content_policy" in code
                              or "content management policy" in server_msg.lower()):
            return self._err(REFUSED, f"content filter (HTTP 400 {code})", status=status)
        if status in (408, 409, 429) or status >= 500:
            return self._err(RETRY, f"HTTP {status}{' ' + code if code else ''}", status=status,
                             retry_after=retry_after(headers), limits=server_limits(headers))
        return self._err(PERMANENT, f"HTTP {status} {code}: {server_msg}".strip(), status=status)

    async def close(self) -> None:
        await self.client.close()

