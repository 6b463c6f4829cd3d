"""A stand-in OpenAI-compatible streaming server with a known timing schedule, for the client's
tests and benchmarks (a real engine's timing is unknown; this one's is the truth).

    python tests/fake_openai_server.py --port 8123 --ttft 0.150 --itl 0.012
    python tests/fake_openai_server.py --port 8123 --ttft 0 --itl 0 --events-per-write 32   # flat out

Every completion streams exactly max_tokens tokens: the first `ttft` seconds after the
request arrived, token i at arrival + ttft + i * itl (an absolute schedule: no drift); with
--itl-per-other, itl grows by that much per other stream in flight at arrival (a known load law).
It counts a token-id prompt's length exactly and a text prompt's by whitespace-separated
words. Failure modes for the tests: --never-ready, --status 500, --die-after N (the process
exits in the middle of its N+1th stream). GET /stats returns every finished stream's arrival,
a digest of its prompt and its real send times (perf_counter, the clock the client stamps
with), so a test or benchmark can tell the client's error from the server's own lateness.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import os
import time

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--ttft", type=float, default=0.150, help="seconds from request to first token")
parser.add_argument("--itl", type=float, default=0.012, help="seconds between tokens")
parser.add_argument(
    "--itl-per-other",
    type=float,
    default=0.0,
    help="a load law: each stream's gap between tokens grows by this much per other stream in flight when it arrived",
)
parser.add_argument("--model", default="fake-model")
parser.add_argument("--events-per-write", type=int, default=1, help="SSE events per socket write (throughput mode)")
parser.add_argument("--never-ready", action="store_true", help="answer 503 to every readiness probe")
parser.add_argument("--status", type=int, default=200, help="answer completions with this HTTP status")
parser.add_argument("--die-after", type=int, default=None, help="exit in the middle of stream N+1")
parser.add_argument("--no-usage", action="store_true", help="never send usage (like servers that lack it)")
parser.add_argument("--extra-prompt-tokens", type=int, default=0, help="count prompts this much longer (a BOS)")
parser.add_argument(
    "--hold-every",
    type=int,
    default=0,
    help="every Nth token's event has empty text, its text coming with the next one (as a real server "
    "holds back a token that ends inside a UTF-8 character)",
)
ARGS = parser.parse_args()
STATS: list[dict] = []
STARTED = 0
IN_FLIGHT = 0
SPIN_S = 0.0015


def _response(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "")
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def _event(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _text(i: int) -> str:
    """Token i's text; a held-back token's text comes with the token after it."""
    if ARGS.hold_every and i % ARGS.hold_every == ARGS.hold_every - 1:
        return ""
    held = ARGS.hold_every and i > 0 and (i - 1) % ARGS.hold_every == ARGS.hold_every - 1
    return (f" w{i - 1}" if held else "") + f" w{i}"


@functools.cache
def _token_event(kind: str, i: int, token_ids: bool) -> bytes:
    """Token i's event, encoded once: in throughput mode the server's work must stay small."""
    text = _text(i)
    choice = {"index": 0, "delta": {"content": text}} if kind.startswith("chat") else {"index": 0, "text": text}
    if token_ids:  # vLLM's return_token_ids
        choice["token_ids"] = [100 + i]
    return _event({"object": kind, "choices": [choice]})


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _prompt_tokens(body: dict, chat: bool) -> int:
    if chat:
        return sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    prompt = body.get("prompt", "")
    return ARGS.extra_prompt_tokens + (len(prompt) if isinstance(prompt, list) else len(str(prompt).split()))


class _Server(asyncio.Protocol):
    """One connection; requests are stamped on arrival, before any parsing (keep-alive)."""

    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""
        self.writable = asyncio.Event()
        self.writable.set()

    def pause_writing(self):
        self.writable.clear()

    def resume_writing(self):
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        arrived = asyncio.get_running_loop().time()
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = self.buffer[:end].decode("latin-1").split("\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return
        body = json.loads(self.buffer[end + 4 : end + 4 + length]) if length else {}
        self.buffer = self.buffer[end + 4 + length :]
        method, path, _ = lines[0].split(" ", 2)
        self.answer(method, path, body, arrived)

    def answer(self, method: str, path: str, body: dict, arrived: float) -> None:
        global IN_FLIGHT
        write = self.transport.write
        if method == "GET" and path in ("/v1/models", "/health"):
            if ARGS.never_ready:
                write(_response(503, b'{"error": "loading"}'))
            else:
                write(_response(200, json.dumps({"data": [{"id": ARGS.model}]}).encode()))
        elif method == "GET" and path == "/stats":
            write(_response(200, json.dumps(STATS).encode()))
        elif method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            chat = path.endswith("chat/completions")
            if ARGS.status != 200:
                error = {"error": {"message": "injected failure", "code": ARGS.status}}
                write(_response(ARGS.status, json.dumps(error).encode()))
            elif body.get("stream"):
                itl = ARGS.itl + ARGS.itl_per_other * IN_FLIGHT  # counted on arrival, before this one joins
                IN_FLIGHT += 1
                asyncio.ensure_future(self.stream(body, chat, arrived, itl))
            else:
                usage = {"prompt_tokens": _prompt_tokens(body, chat), "completion_tokens": body.get("max_tokens", 16)}
                write(_response(200, json.dumps({"choices": [{"text": ""}], "usage": usage}).encode()))
        else:
            write(_response(404, b'{"error": "not found"}'))

    async def stream(self, body: dict, chat: bool, arrived: float, itl: float) -> None:
        global IN_FLIGHT
        try:
            await self._stream(body, chat, arrived, itl)
        finally:
            IN_FLIGHT -= 1

    async def _stream(self, body: dict, chat: bool, arrived: float, itl: float) -> None:
        global STARTED
        STARTED += 1
        dies = ARGS.die_after is not None and ARGS.die_after < STARTED
        loop = asyncio.get_running_loop()
        tokens = int(body.get("max_tokens") or 16)
        write = self.transport.write
        write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        kind = "chat.completion.chunk" if chat else "text_completion"
        sent, pending = [], []
        if chat:  # a chat stream opens with the assistant's role and no token, as vLLM's does
            write(
                _chunk(
                    _event({"object": kind, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
                )
            )
        for i in range(tokens):
            if dies and i == tokens // 2:
                os._exit(3)
            due = arrived + ARGS.ttft + i * itl
            # the event loop wakes up to 1 ms late (epoll's resolution): sleep short, then spin; but
            # only with few streams, whose spins would otherwise hold each other's tokens back
            spin = SPIN_S if IN_FLIGHT <= 2 else 0.0
            if due - loop.time() > spin:
                await asyncio.sleep(due - loop.time() - spin)
            while loop.time() < due:
                pass
            pending.append(_token_event(kind, i, bool(body.get("return_token_ids"))))
            if len(pending) >= ARGS.events_per_write:
                # stamped before the write: a client can never read an event before its stamp
                sent.append(time.perf_counter())
                write(_chunk(b"".join(pending)))
                pending.clear()
                if not self.writable.is_set():
                    await self.writable.wait()
            if self.transport.is_closing():
                return
        if (body.get("stream_options") or {}).get("include_usage") and not ARGS.no_usage:
            usage = {"prompt_tokens": _prompt_tokens(body, chat), "completion_tokens": tokens}
            pending.append(_event({"choices": [], "usage": usage}))
        pending.append(_event("[DONE]"))
        write(_chunk(b"".join(pending)) + b"0\r\n\r\n")
        prompt = json.dumps(body.get("messages") if chat else body.get("prompt"), sort_keys=True)
        STATS.append({"arrived": arrived, "sent": sent, "prompt": hashlib.sha256(prompt.encode()).hexdigest()[:16]})


async def main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Server, ARGS.host, ARGS.port, backlog=1024)
    print(f"fake server on http://{ARGS.host}:{ARGS.port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
