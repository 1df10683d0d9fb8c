"""A fake OpenAI chat-completions server for tests, benchmarks and trying --backend openai offline (not a labeller).

It speaks enough of the protocol for the ``openai`` client to accept its replies and can be told to
misbehave the ways real endpoints do: 429 with Retry-After / retry-after-ms and ``x-ratelimit-*``
headers, 500/503, hangs past the client's timeout, malformed bodies, non-JSON content, its own
sliding-window request and token limits, 401 for a wrong key, 404 for a wrong model, and content-filter
refusals (HTTP 400 ``content_filter`` or ``finish_reason: "content_filter"``). Like a real endpoint it
stops a reply at the request's ``max_tokens`` (by its own count) with ``finish_reason: "length"``, so a
small ``--max-tokens`` produces cut-off labels on demand. It logs every request
it receives, so tests can count what reached it rather than trust the client's own accounting.

Like a self-hosted server (llama.cpp, vLLM, Ollama) it can also queue: with ``slots`` set it serves at
most that many requests at once and the others wait, first come first served, each taking
``per_token_s`` per prompt token (prompt processing) and then ``chunk_s`` per streamed chunk. It
streams when asked (``stream: true``: server-sent events, usage in a last chunk when
``stream_options.include_usage``), and its ``stall`` fault stops sending after the first chunk. A
request whose client left (timed out) is still served to the end, as real servers do, and its log
entry says so (``client_gone``).

It runs in its own process (``python -m cluster_service.testing.openai_server``) so its clock and
CPU are not the client's; ``ServerProcess`` starts it and talks to its ``/_control`` and ``/_stats``
endpoints. The expected key comes from the environment variable named by ``--key-env``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import random
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter, deque
from typing import Any

from aiohttp import web

DEFAULTS: dict[str, Any] = {
    "models": ["gpt-4o-mini", "test-model"],
    "latency_s": [0.02, 0.08],  # uniform per successful request
    "rates": {},  # fault -> probability: "429", "500", "503", "hang", "malformed", "not_json_content"
    "script": [],  # faults applied to the next requests, in order, before the random ones
    "retry_after_s": 1.0,
    "retry_after_ms": None,  # also send retry-after-ms (the openai client prefers it)
    "hang_s": 30.0,  # a hung request answers 503 after this long (never a success)
    "hang_after": None,  # after this many successful replies, every request hangs
    "rpm_limit": None,  # the server's own sliding-window limits
    "tpm_limit": None,
    "window_s": 60.0,
    "filter_words": [],  # a prompt listing one of these >= filter_min_count times is refused
    "filter_min_count": 2,
    "filter_style": "400",  # "400" (HTTP 400 content_filter) or "finish" (finish_reason content_filter)
    "seed": 0,
    # detection-scoring prompts (a "Concept label: ..." line and words marked <<like this>>) are answered
    # by this scripted scorer: None (answer as a labeller, as before), "label_words" (1 exactly when the
    # marked word is one of the label's words), "random" (seeded coin flips), "garbage" (no list)
    "detector": None,
    "slots": None,  # serve at most this many requests at once; the others wait in a FIFO queue
    "per_token_s": None,  # service time per prompt token (replaces latency_s when set)
    "chunk_s": 0.0,  # pause before each streamed chunk after the first
    "chunks": 3,  # content chunks of a streamed reply
    "log_prompts": False,  # keep each request's last user message in the log ("user")
}
FAULTS = ("429", "500", "503", "hang", "malformed", "not_json_content", "filter400", "filter_finish",
          "stall")  # stall: streams only
_LABEL_LINE = re.compile(r"^Concept label: (.*)$", re.MULTILINE)
_MARKED = re.compile(r"<<(.+?)>>")
_NUMBERED = re.compile(r"^\d+\. ")
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")


def server_tokens(text: str) -> int:
    """The server's own token count: deliberately not the client's estimate, as with a real endpoint."""
    return max(1, math.ceil(len(text) / 3.6))


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(server_tokens(str(m.get("content", ""))) + 4 for m in messages) + 3


def listed_words(messages: list[dict[str, Any]]) -> list[str]:
    user = next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")
    body = user.split("[", 1)[1] if "[" in user else ""
    body = body.split("]\n", 1)[0]
    return [a or b for a, b in _QUOTED.findall(body)]


class FakeOpenAI:
    def __init__(self, api_key: str, settings: dict[str, Any] | None = None):
        self.api_key = api_key
        self.settings = {**DEFAULTS, **(settings or {})}
        self.rng = random.Random(self.settings["seed"])
        self.log: list[dict[str, Any]] = []
        self.successes = 0
        self.accepted: deque[tuple[float, int]] = deque()  # (time, tokens) counted by the server's limits
        self.in_server = 0  # requests received and not yet finished (queued or served)
        self._slots: asyncio.Semaphore | None = None
        self._slots_n: int | None = None

    def _slot(self) -> asyncio.Semaphore | None:
        """The queue in front of the server's slots (None: no limit); rebuilt when ``slots`` changes."""
        n = self.settings["slots"]
        if n != self._slots_n:
            self._slots, self._slots_n = (asyncio.Semaphore(int(n)) if n else None), n
        return self._slots

    # ---- helpers ------------------------------------------------------------------------------
    def _error(self, status: int, message: str, code: str, headers: dict[str, str] | None = None,
               etype: str = "invalid_request_error") -> web.Response:
        body = {"error": {"message": message, "type": etype, "param": None, "code": code}}
        return web.json_response(body, status=status, headers=headers)

    def _retry_headers(self, seconds: float) -> dict[str, str]:
        headers = {"retry-after": str(max(1, math.ceil(seconds)))}
        if self.settings["retry_after_ms"] is not None:
            headers["retry-after-ms"] = str(int(self.settings["retry_after_ms"]))
        return headers

    def _limit(self, now: float, tokens: int) -> web.Response | None:
        """The server's own sliding-window limits over the requests it accepted."""
        window = self.settings["window_s"]
        while self.accepted and self.accepted[0][0] <= now - window:
            self.accepted.popleft()
        rpm, tpm = self.settings["rpm_limit"], self.settings["tpm_limit"]
        used = sum(t for _, t in self.accepted)
        over_r = rpm is not None and len(self.accepted) + 1 > rpm
        over_t = tpm is not None and used + tokens > tpm
        if not (over_r or over_t):
            self.accepted.append((now, tokens))
            return None
        reset = self.accepted[0][0] + window - now if self.accepted else window
        headers = self._retry_headers(reset)
        headers.update({
            "x-ratelimit-limit-requests": str(rpm or 0),
            "x-ratelimit-remaining-requests": "0" if over_r else str(int((rpm or 0) - len(self.accepted))),
            "x-ratelimit-reset-requests": f"{reset:.3f}s",
            "x-ratelimit-remaining-tokens": "0" if over_t else str(int((tpm or 0) - used)),
            "x-ratelimit-reset-tokens": f"{reset:.3f}s",
        })
        return self._error(429, "Rate limit reached for requests", "rate_limit_exceeded", headers,
                           etype="requests")

    def _next_fault(self) -> str | None:
        if self.settings["script"]:
            return self.settings["script"].pop(0)
        for fault, p in self.settings["rates"].items():
            if self.rng.random() < p:
                return fault
        return None

    def _detection(self, messages: list[dict[str, Any]]) -> str | None:
        """The scripted scorer's answer to a detection-scoring prompt, None for any other prompt."""
        mode = self.settings["detector"]
        user = next((str(m.get("content", "")) for m in messages if m.get("role") == "user"), "")
        label = _LABEL_LINE.search(user)
        if mode is None or label is None:
            return None
        numbered = [line for line in user.splitlines() if _NUMBERED.match(line)]
        marked = [m.group(1) for line in numbered if (m := _MARKED.search(line))]
        if mode == "garbage":
            return "I cannot tell which of these belong."
        if mode == "random":
            return json.dumps([self.rng.randint(0, 1) for _ in marked])
        label_words = {w.lower() for w in re.findall(r"\w+", label.group(1))}
        return json.dumps([int(w.lower() in label_words) for w in marked])

    def _reply_content(self, body: dict[str, Any], words: list[str]) -> str:
        detected = self._detection(body.get("messages", []))
        if detected is not None:
            return detected
        counts = Counter(words)
        top = sorted(counts, key=lambda w: (-counts[w], w))[:2] or ["nothing"]
        label = " and ".join(top) + " words"
        messages = body.get("messages", [])
        system = " ".join(str(m.get("content", "")) for m in messages if m.get("role") == "system")
        wants_json = (body.get("response_format") or {}).get("type") == "json_object" or "JSON" in system
        if wants_json:
            return json.dumps({"label": label, "description": f"Words like {', '.join(top)}.",
                               "type": "semantic"})
        return label

    @staticmethod
    def _cut(content: str, body: dict[str, Any]) -> tuple[str, str]:
        """The reply and its finish_reason: ``length`` and the reply cut short when it is longer than the
        request's completion limit."""
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if limit is None or server_tokens(content) <= int(limit):
            return content, "stop"
        return content[: max(1, math.floor(int(limit) * 3.6))], "length"

    # ---- endpoints ----------------------------------------------------------------------------
    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.in_server += 1
        try:
            return await self._chat(request)
        finally:
            self.in_server -= 1

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        raw = await request.read()
        entry: dict[str, Any] = {"t": now, "status": None, "fault": None, "prompt_tokens": 0,
                                 "completion_tokens": 0, "in_server": self.in_server}
        self.log.append(entry)
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            entry["status"] = 400
            return self._error(400, "body is not JSON", "invalid_json")
        messages = body.get("messages") or []
        entry["stream"] = bool(body.get("stream"))
        if self.settings["log_prompts"]:
            entry["user"] = next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")
        canonical = {k: body.get(k) for k in ("model", "messages", "temperature", "max_tokens",
                                               "max_completion_tokens", "response_format")}
        entry["hash"] = hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:16]
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            entry["status"] = 401
            return self._error(401, "Incorrect API key provided.", "invalid_api_key")
        if body.get("model") not in self.settings["models"]:
            entry["status"] = 404
            return self._error(404, f"The model `{body.get('model')}` does not exist or you do not have "
                               "access to it.", "model_not_found")
        p_tokens = prompt_tokens(messages)
        limited = self._limit(now, p_tokens)
        if limited is not None:
            entry["status"], entry["fault"] = 429, "limit"
            return limited
        entry["prompt_tokens"] = p_tokens
        hang_after = self.settings["hang_after"]
        fault = "hang" if hang_after is not None and self.successes >= hang_after else self._next_fault()
        words = listed_words(messages)
        counts = Counter(words)
        if fault is None and any(counts[w] >= self.settings["filter_min_count"]
                                 for w in self.settings["filter_words"]):
            fault = "filter400" if self.settings["filter_style"] == "400" else "filter_finish"
        entry["fault"] = fault
        if fault == "429":
            entry["status"] = 429
            return self._error(429, "Rate limit reached (injected)", "rate_limit_exceeded",
                               self._retry_headers(self.settings["retry_after_s"]), etype="requests")
        if fault in ("500", "503"):
            entry["status"] = int(fault)
            return self._error(int(fault), "The server had an error (injected)", "server_error",
                               etype="server_error")
        if fault == "hang":
            await asyncio.sleep(self.settings["hang_s"])
            entry["status"] = 503
            return self._error(503, "hung (injected)", "server_error", etype="server_error")
        if fault == "malformed" and not entry["stream"]:
            entry["status"] = 200
            return web.Response(text='{"id": "chatcmpl-x", "choices": [{"message": ', status=200,
                                content_type="application/json")
        if fault == "filter400":
            entry["status"] = 400
            return self._error(400, "The response was filtered due to the prompt triggering the content "
                               "management policy.", "content_filter")
        if fault == "filter_finish":
            content, finish = None, "content_filter"
        elif fault == "not_json_content":
            content, finish = "Sure! Here is a label: maybe animals?", "stop"
        else:
            content, finish = self._cut(self._reply_content(body, words), body)
        c_tokens = server_tokens(content or "") if content else 0
        if entry["stream"]:
            return await self._streamed(request, body, entry, fault, content, finish, p_tokens, c_tokens)
        await self._serve_time(entry, p_tokens)
        served = finish in ("stop", "length")
        entry.update(status=200, completion_tokens=c_tokens, success=served, finish_reason=finish)
        self.successes += served
        payload = {
            "id": f"chatcmpl-{len(self.log)}", "object": "chat.completion", "created": int(time.time()),
            "model": body["model"], "system_fingerprint": "fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": p_tokens, "completion_tokens": c_tokens,
                      "total_tokens": p_tokens + c_tokens},
        }
        return web.json_response(payload)

    def _service_s(self, p_tokens: int) -> float:
        if self.settings["per_token_s"] is not None:
            return float(self.settings["per_token_s"]) * p_tokens
        lo, hi = self.settings["latency_s"]
        return self.rng.uniform(lo, hi)

    async def _serve_time(self, entry: dict[str, Any], p_tokens: int, then: Any = None) -> Any:
        """Wait for a slot (if the server has few), process the prompt, then run ``then`` (the streamed
        chunks) while still holding the slot."""
        slot = self._slot()
        arrived = time.monotonic()
        if slot is not None:
            await slot.acquire()
        try:
            entry["queued_s"] = round(time.monotonic() - arrived, 4)
            await asyncio.sleep(self._service_s(p_tokens))
            return await then() if then is not None else None
        finally:
            if slot is not None:
                slot.release()

    async def _streamed(self, request: web.Request, body: dict[str, Any], entry: dict[str, Any],
                        fault: str | None, content: str | None, finish: str, p_tokens: int,
                        c_tokens: int) -> web.StreamResponse:
        """Server-sent events as OpenAI sends them: a role chunk, content chunks, the finish chunk, a
        usage chunk (if asked for), ``[DONE]``. Headers go out at once, the chunks once served."""
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream",
                                                           "Cache-Control": "no-cache"})
        await response.prepare(request)
        entry["status"] = 200
        base = {"id": f"chatcmpl-{len(self.log)}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": body["model"], "system_fingerprint": "fake"}

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return f"data: {json.dumps({**base, 'choices': choices, **extra})}\n\n".encode()

        def delta(payload: dict[str, Any], finish_reason: str | None = None) -> bytes:
            return event([{"index": 0, "delta": payload, "finish_reason": finish_reason, "logprobs": None}])

        n = max(1, int(self.settings["chunks"]))
        text = content or ""
        step = max(1, math.ceil(len(text) / n))
        pieces = [text[i: i + step] for i in range(0, len(text), step)]

        async def send() -> None:
            await response.write(delta({"role": "assistant", "content": ""}))
            entry["first_chunk_t"] = time.monotonic()
            if fault == "malformed":
                await response.write(b'data: {"id": "chatcmpl-x", "choices": [{"delta": \n\n')
                return
            if fault == "stall":
                entry["stalled"] = True
                await asyncio.sleep(self.settings["hang_s"])
                return
            for piece in pieces:
                if self.settings["chunk_s"]:
                    await asyncio.sleep(self.settings["chunk_s"])
                await response.write(delta({"content": piece}))
            await response.write(delta({}, finish))
            if (body.get("stream_options") or {}).get("include_usage"):
                await response.write(event([], usage={"prompt_tokens": p_tokens, "completion_tokens": c_tokens,
                                                      "total_tokens": p_tokens + c_tokens}))
            await response.write(b"data: [DONE]\n\n")
            served = finish in ("stop", "length")
            entry.update(completion_tokens=c_tokens, success=served, finish_reason=finish)
            self.successes += served

        try:
            await self._serve_time(entry, p_tokens, send)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            entry["client_gone"] = True  # the client timed out and left; the work was done all the same
        entry["done_t"] = time.monotonic()
        return response

    async def control(self, request: web.Request) -> web.Response:
        update = await request.json()
        if update.pop("reset_log", False):
            self.log.clear()
            self.accepted.clear()
            self.successes = 0
            self._slots_n = -1  # a fresh queue
        self.settings.update(update)
        if "seed" in update:
            self.rng = random.Random(update["seed"])
        return web.json_response({"ok": True})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"now": time.monotonic(), "log": self.log})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/_control", self.control)
        app.router.add_get("/_stats", self.stats)
        return app


async def _serve(port: int, api_key: str, settings: dict[str, Any]) -> None:
    runner = web.AppRunner(FakeOpenAI(api_key, settings).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"listening http://127.0.0.1:{bound}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one, printed)")
    parser.add_argument("--key-env", default="FAKE_OPENAI_KEY", help="env var holding the accepted key")
    parser.add_argument("--settings", default="{}", help="JSON object overriding DEFAULTS")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.port, os.environ.get(args.key_env, ""), json.loads(args.settings)))


class ServerProcess:
    """Start the fake server in a child process; ``url`` is its OpenAI base URL."""

    def __init__(self, api_key: str, **settings: Any):
        env = {**os.environ, "FAKE_OPENAI_KEY": api_key}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cluster_service.testing.openai_server",
             "--settings", json.dumps(settings)],
            stdout=subprocess.PIPE, env=env, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("listening "):
            self.proc.kill()
            raise RuntimeError(f"fake OpenAI server did not start: {line!r}")
        self.root = line.split()[1]
        self.url = self.root + "/v1"

    def _call(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(self.root + path, data=data,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def control(self, **settings: Any) -> None:
        self._call("/_control", settings)

    def reset(self, **settings: Any) -> None:
        """Back to DEFAULTS plus ``settings``, with an empty request log."""
        self._call("/_control", {**json.loads(json.dumps(DEFAULTS)), **settings, "reset_log": True})

    def log(self) -> list[dict[str, Any]]:
        return self._call("/_stats")["log"]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    main()
