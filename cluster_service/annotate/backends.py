"""The OpenAI-compatible backend: one chat call, and every way it can fail sorted into what to do next.

Replies are streamed (``stream_options.include_usage``, so usage still arrives, in the last chunk), with a
timeout to the first chunk and one between chunks instead of one for the whole reply (``OpenAIBackend``).
The ``openai`` client's own retries are off (``max_retries=0``): the pool retries, so that every attempt
passes the rate limiter and is counted. Errors become ``CallError`` with an action: ``retry`` (429,
5xx, timeouts, connection errors, malformed bodies; with the server's Retry-After if it sent one),
``fatal`` (401/403, unknown model, exhausted quota: nothing later can succeed, so the run stops),
``refused`` (content filter) or ``permanent`` (any other 4xx: this concept fails, the rest go on).
The API key is read from the environment here and nowhere else, and scrubbed from every message.
"""

from __future__ import annotations

import asyncio
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
    timeout: bool = False  # no first token, or no next chunk, in time

    @property
    def overload(self) -> bool:
        """The server could not keep up (a timeout, a 503, or a 429 that is not a rate limit): the pool
        lowers its concurrency. A 429 with Retry-After or ``x-ratelimit-*`` headers is a rate limit,
        which the rate limiter answers (it pauses and adopts the server's limits): fewer requests in
        flight would not make the window's quota larger."""
        if self.timeout or self.status == 503:
            return True
        return self.status == 429 and self.retry_after is None and self.limits is None

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


#: Default longest silence between two chunks of a streamed reply before it counts as a stalled server.
CHUNK_TIMEOUT_S = 15.0


class OpenAIBackend:
    """Chat calls to one OpenAI-compatible endpoint, streamed by default.

    A streamed reply has two timeouts instead of one for the whole request: ``first_token_timeout_s``
    (per call; the pool lengthens it as it sees requests wait in a server's queue) until the first
    chunk, and ``chunk_timeout_s`` between chunks, so a slow but working server is never cut off and one
    that stops sending mid-reply is noticed within the chunk timeout. ``stream=False`` makes one plain
    call bounded by ``timeout_s`` (for servers that cannot stream)."""

    name = "openai"

    def __init__(self, base_url: str | None, model: str, api_key_env: str, timeout_s: float,
                 chunk_timeout_s: float = CHUNK_TIMEOUT_S, stream: bool = True):
        key = os.environ.get(api_key_env)
        if not key:
            raise UserError(f"annotate: environment variable {api_key_env} is not set; export the API key "
                            "there (or pass --api-key-env NAME), or use --backend baseline")
        self.model = model
        self.base_url = base_url
        self._key = key
        self.where = base_url or "the OpenAI API"
        self.timeout_s = timeout_s
        self.chunk_timeout_s = chunk_timeout_s
        self.stream = stream
        # streamed calls are bounded by our own first-token and chunk timeouts, not the client's read timeout
        timeout = openai.Timeout(None, connect=timeout_s) if stream else timeout_s
        self.client = openai.AsyncOpenAI(api_key=key, base_url=base_url, timeout=timeout, max_retries=0)

    def _err(self, action: str, reason: str, **kw: Any) -> CallError:
        return CallError(action, redact(reason, self._key), **kw)

    async def complete(self, request: dict[str, Any],
                       first_token_timeout_s: float | None = None) -> tuple[Reply, ServerLimits | None]:
        """One chat completion for ``request`` (messages + parameters), and what the server said about
        its rate limits; raises ``CallError``. ``first_token_timeout_s`` defaults to ``timeout_s``."""
        start = time.monotonic()
        try:
            if self.stream:
                return await self._streamed(request, start, first_token_timeout_s or self.timeout_s)
            raw = await self.client.chat.completions.with_raw_response.create(model=self.model, **request)
            completion = raw.parse()
        except (openai.APITimeoutError, TimeoutError):
            raise self._err(RETRY, "request timed out", timeout=True) from None
        except openai.APIConnectionError as exc:
            raise self._err(RETRY, f"connection error: {exc.__cause__ or exc}") from None
        except openai.APIStatusError as exc:
            raise self._classify(exc) from None
        except (json.JSONDecodeError, ValueError, openai.APIResponseValidationError) as exc:
            raise self._err(RETRY, f"malformed response body: {exc}") from None
        except openai.APIError as exc:  # an error event inside a stream
            raise self._err(RETRY, f"error in the stream: {exc}") from None
        latency = time.monotonic() - start
        choices = getattr(completion, "choices", None)
        if not choices:
            raise self._err(RETRY, "malformed response: no choices")
        choice = choices[0]
        message = getattr(choice, "message", None)
        return self._reply(getattr(message, "content", None), choice.finish_reason,
                           getattr(completion, "model", None), getattr(completion, "usage", None),
                           latency, latency), server_limits(raw.headers)

    def _reply(self, content: str | None, finish_reason: str | None, model: str | None, usage: Any,
               latency: float, first_token: float | None) -> Reply:
        if content is None and finish_reason != "content_filter":
            raise self._err(RETRY, f"malformed response: no content (finish_reason {finish_reason})")
        return Reply(content, finish_reason, model, int(getattr(usage, "prompt_tokens", 0) or 0),
                     int(getattr(usage, "completion_tokens", 0) or 0), latency, first_token_s=first_token)

    async def _streamed(self, request: dict[str, Any], start: float,
                        first_token_timeout_s: float) -> tuple[Reply, ServerLimits | None]:
        """Stream the reply: the first chunk within ``first_token_timeout_s`` of sending (headers
        included), each next one within ``chunk_timeout_s``; usage comes in the last chunk."""
        deadline = start + first_token_timeout_s

        def first_chunk_left() -> float:
            return max(0.001, deadline - time.monotonic())

        raw = await asyncio.wait_for(self.client.chat.completions.with_raw_response.create(
            model=self.model, stream=True, stream_options={"include_usage": True}, **request),
            timeout=first_chunk_left())
        stream = raw.parse()
        parts: list[str] = []
        finish = model = usage = first_token = None
        saw_choice = False
        try:
            chunks = stream.__aiter__()
            while True:
                wait = first_chunk_left() if first_token is None else self.chunk_timeout_s
                try:
                    chunk = await asyncio.wait_for(chunks.__anext__(), timeout=wait)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    what = ("no first token within " if first_token is None
                            else "server stopped sending mid-reply: no chunk within ")
                    raise self._err(RETRY, f"{what}{wait:.1f} s", timeout=True) from None
                if first_token is None:
                    first_token = time.monotonic() - start
                model = getattr(chunk, "model", None) or model
                usage = getattr(chunk, "usage", None) or usage
                for choice in getattr(chunk, "choices", None) or []:
                    saw_choice = True
                    delta = getattr(choice, "delta", None)
                    if delta is not None and delta.content:
                        parts.append(delta.content)
                    finish = choice.finish_reason or finish
        finally:
            await stream.close()
        if not saw_choice:
            raise self._err(RETRY, "malformed response: the stream carried no choices")
        if finish is None:
            raise self._err(RETRY, "malformed response: the stream ended without a finish_reason")
        content = "".join(parts) if parts or finish != "content_filter" else None
        return (self._reply(content, finish, model, usage, time.monotonic() - start, first_token),
                server_limits(raw.headers))

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

