"""One asynchronous streaming client for every OpenAI-compatible server, and its load patterns.

HTTP/1.1 and server-sent events are handled by hand on asyncio protocols: each network
read is stamped once with time.perf_counter(), the raw `data:` payloads are kept as they
arrive, and JSON is parsed only after the run. The client's own work stays off the clock,
and one process sustains hundreds of streams (tests/benchmarks/bench_client.py).

The clock of a request starts when its bytes are written to an open connection: time spent
waiting for a concurrency slot or opening the connection is not the server's TTFT.

Load patterns: closed loop (`concurrency` requests in flight, the next one sent when one
ends) and open loop (Poisson arrivals at `request_rate` per second). Either may be split
over several client processes whose records are merged (perf_counter is the system-wide
monotonic clock on Linux, so their times are comparable).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import multiprocessing
import random
import resource
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pipeline.engines.base import RequestResult

COMPLETIONS, CHAT = "completions", "chat"
API_PATHS = {COMPLETIONS: "/v1/completions", CHAT: "/v1/chat/completions"}
SATURATED_CPU_SHARE = 0.9  # a client process busier than this may be measuring itself


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str
    api: str = COMPLETIONS
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_base_url(cls, base_url: str, api: str = COMPLETIONS, api_key: str | None = None) -> Target:
        """http://host:port[/v1] -> the endpoint of `api` on it."""
        if api not in API_PATHS:
            raise ValueError(f"api must be one of {sorted(API_PATHS)}, got {api!r}")
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"base_url must look like http://HOST:PORT[/v1] (no https), got {base_url!r}")
        prefix = parts.path.rstrip("/").removesuffix("/v1")
        headers = (("Authorization", f"Bearer {api_key}"),) if api_key else ()
        return cls(parts.hostname, parts.port or 80, prefix + API_PATHS[api], api, headers)

    def request_bytes(self, body: dict) -> bytes:
        payload = json.dumps(body, separators=(",", ":")).encode()
        head = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            "Accept: text/event-stream",
            f"Content-Length: {len(payload)}",
            *(f"{k}: {v}" for k, v in self.headers),
        ]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


@dataclass
class RawResponse:
    """What arrived for one request, unparsed: (arrival time, data payload) per SSE event."""

    t_send: float = 0.0
    t_done: float = 0.0
    status: int | None = None
    events: list[tuple[float, bytes]] = field(default_factory=list)
    body: bytes = b""  # the body of a response that was not an event stream (errors)
    error: str = ""


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time. Per request it parses
    the status line, headers, chunked or plain body and SSE events, doing as little as it
    can per network read."""

    def __init__(self):
        self.transport = None
        self.closed = False
        self.raw: RawResponse | None = None
        self.done: asyncio.Future | None = None

    def begin(self, raw: RawResponse, done: asyncio.Future) -> None:
        self.raw, self.done = raw, done
        self.received = False
        self.head = bytearray()
        self.in_body = False
        self.chunked = False
        self.event_stream = False
        self.close_after = False
        self.remaining: int | None = None  # Content-Length left, for a plain body
        self.pending = bytearray()  # chunked framing not yet decoded
        self.chunk_left = 0  # bytes of the current chunk still to come
        self.sse = b""  # decoded bytes not yet split into events

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.raw is None:  # nothing asked: a server talking out of turn cannot be trusted
            self.transport.close()
            return
        self.received = True
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            data = bytes(self.head[end + 4 :])
            if not self._parse_head(bytes(self.head[:end])):
                return
            self.in_body = True
        if self.chunked:
            data = self._dechunk(data)
        elif self.remaining is not None:
            self.remaining -= len(data)
        self._feed(data, now)
        if self.raw is not None and self.remaining is not None and self.remaining <= 0:
            self._finish()

    def _parse_head(self, head: bytes) -> bool:
        lines = head.decode("latin-1").split("\r\n")
        try:
            self.raw.status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            self._finish(f"malformed HTTP status line {lines[0]!r}")
            return False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "transfer-encoding" and "chunked" in value:
                self.chunked = True
            elif name == "content-length":
                self.remaining = int(value)
            elif name == "content-type":
                self.event_stream = value.startswith("text/event-stream")
            elif name == "connection" and value == "close":
                self.close_after = True
        return True

    def _dechunk(self, data: bytes) -> bytes:
        """Chunked transfer encoding -> payload bytes; the last chunk ends the body."""
        out = []
        pending = self.pending
        pending += data
        pos = 0
        while True:
            if self.chunk_left:
                take = min(self.chunk_left, len(pending) - pos)
                if take <= 0:
                    break
                out.append(pending[pos : pos + take])
                pos += take
                self.chunk_left -= take
                continue
            line_end = pending.find(b"\r\n", pos)
            if line_end < 0:
                break
            size_field = pending[pos:line_end].split(b";")[0].strip()
            pos = line_end + 2
            if not size_field:  # the CRLF that closes a chunk's data
                continue
            size = int(size_field, 16)
            if size == 0:
                self.remaining = 0
                # the body ends with an empty line after the last chunk: where it has not come with
                # it (llama-server sends it apart), it would be read as the next response's start
                if pending[pos : pos + 2] != b"\r\n":
                    self.close_after = True
                break
            self.chunk_left = size
        del pending[:pos]
        return b"".join(out)

    def _feed(self, data: bytes, now: float) -> None:
        if not data:
            return
        if self.raw.status != 200 or not self.event_stream:
            self.raw.body += data
            return
        buffer = self.sse + data
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        *events, self.sse = buffer.split(b"\n\n")
        append = self.raw.events.append
        for event in events:
            for line in event.split(b"\n"):
                if line[:5] == b"data:":
                    payload = line[5:].strip()
                    if payload != b"[DONE]":
                        append((now, payload))

    def _finish(self, error: str = "") -> None:
        raw, done = self.raw, self.done
        self.raw = self.done = None
        raw.t_done = time.perf_counter()
        raw.error = raw.error or error
        if error or self.close_after:
            self.close()
        if not done.done():
            done.set_result(None)

    def expire(self, timeout_s: float) -> None:
        if self.raw is not None:
            self._finish(f"no complete response within {timeout_s:g}s")

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.raw is None:
            return
        if self.in_body and not self.chunked and self.remaining is None:
            self._finish()  # a body delimited by the connection's close
        else:
            self._finish(f"connection closed before the response was complete{f': {exc}' if exc else ''}")


class _Pool:
    """Open keep-alive connections to one target: opened before the clock starts, reused after."""

    def __init__(self, target: Target):
        self.target = target
        self.idle: list[_Connection] = []

    async def get(self, timeout_s: float, fresh: bool = False) -> tuple[_Connection, bool]:
        while self.idle and not fresh:
            connection = self.idle.pop()
            if not connection.closed:
                return connection, True
        loop = asyncio.get_running_loop()
        opening = loop.create_connection(_Connection, self.target.host, self.target.port)
        _, connection = await asyncio.wait_for(opening, timeout_s)
        return connection, False

    def put(self, connection: _Connection) -> None:
        if not connection.closed:
            self.idle.append(connection)

    async def prime(self, count: int, timeout_s: float) -> None:
        """Open `count` connections now, so that neither side pays for it on a request's clock."""

        async def one():
            try:
                connection, _ = await self.get(timeout_s)
            except (OSError, TimeoutError):
                return None  # the requests themselves will say what is wrong
            return connection

        for connection in await asyncio.gather(*(one() for _ in range(count))):
            if connection is not None:
                self.put(connection)
        await asyncio.sleep(0.05)  # let the server accept them before the first request

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()


async def send(pool: _Pool, request: bytes, timeout_s: float) -> RawResponse:
    """One streamed request; failures are recorded in the response, never raised."""
    loop = asyncio.get_running_loop()
    target = pool.target
    for attempt in range(2):
        raw = RawResponse()
        try:
            # a retry takes a fresh connection: the other idle ones may be closing too (llama-server
            # closes a connection after a few requests on it without saying so in the response)
            connection, reused = await pool.get(timeout_s, fresh=attempt > 0)
        except (OSError, TimeoutError) as exc:
            raw.t_send = raw.t_done = time.perf_counter()
            raw.error = f"cannot connect to {target.host}:{target.port}: {exc or 'timed out'}"
            return raw
        done = loop.create_future()
        connection.begin(raw, done)
        # a timer, not asyncio.wait_for: that costs a task per request (Python 3.11)
        timer = loop.call_later(timeout_s, connection.expire, timeout_s)
        raw.t_send = time.perf_counter()
        connection.transport.write(request)
        await done
        timer.cancel()
        if reused and raw.error and not connection.received:
            continue  # the server had closed this idle connection: once more on a fresh one
        pool.put(connection)
        return raw
    return raw


# -- load patterns ------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """How requests are sent: closed loop at `concurrency`, or open loop at `request_rate`/s."""

    concurrency: int = 1
    request_rate: float | None = None  # None: closed loop
    processes: int = 1
    seed: int = 0
    timeout_s: float = 600.0

    def __post_init__(self):
        if self.concurrency < 1 or self.processes < 1:
            raise ValueError("concurrency and processes must be >= 1")
        if self.request_rate is not None and self.request_rate <= 0:
            raise ValueError(f"request_rate must be > 0 or None, got {self.request_rate}")

    def share(self, index: int) -> Load:
        """This process's part of the load."""
        n = self.processes
        concurrency = self.concurrency // n + (1 if index < self.concurrency % n else 0)
        rate = self.request_rate / n if self.request_rate else None
        return Load(max(concurrency, 1), rate, 1, self.seed * 1000 + index, self.timeout_s)


@dataclass
class ClientRun:
    """Every request's raw response (in the order given) and what the client itself cost."""

    responses: list[RawResponse]
    wall_s: float
    cpu_s: float  # summed over client processes
    max_loop_lag_s: float
    processes: int

    @property
    def cpu_share(self) -> float:
        """Busy share of the client's cores: near 1.0 means the client, not the server, set the pace."""
        return self.cpu_s / (self.wall_s * self.processes) if self.wall_s > 0 else 0.0

    def describe(self) -> dict:
        return {
            "processes": self.processes,
            "cpu_share": round(self.cpu_share, 4),
            "max_loop_lag_s": round(self.max_loop_lag_s, 6),
            "saturated": self.cpu_share >= SATURATED_CPU_SHARE,
        }


async def _closed_loop(pool: _Pool, requests: list[bytes], load: Load) -> list[RawResponse]:
    responses: list[RawResponse | None] = [None] * len(requests)
    next_index = iter(range(len(requests)))

    async def slot():
        for index in next_index:
            responses[index] = await send(pool, requests[index], load.timeout_s)

    await asyncio.gather(*(slot() for _ in range(min(load.concurrency, len(requests)))))
    return responses


async def _open_loop(pool: _Pool, requests: list[bytes], load: Load) -> list[RawResponse]:
    rng = random.Random(load.seed)
    loop = asyncio.get_running_loop()
    start = loop.time()
    at, tasks = 0.0, []
    for request in requests:
        delay = start + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(send(pool, request, load.timeout_s)))
        at += rng.expovariate(load.request_rate)
    return list(await asyncio.gather(*tasks))


async def _run(target: Target, requests: list[bytes], load: Load, start_at: float | None):
    pool = _Pool(target)
    await pool.prime(min(load.concurrency, len(requests)), load.timeout_s)
    if start_at is not None:  # processes of one run start together
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    lag = 0.0

    async def watch_lag():
        nonlocal lag
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            lag = max(lag, time.perf_counter() - before - 0.01)

    watcher = asyncio.ensure_future(watch_lag())
    pattern = _open_loop if load.request_rate else _closed_loop
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    try:
        responses = await pattern(pool, requests, load)
    finally:
        watcher.cancel()
        pool.close()
    return responses, lag, started, cpu_started


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run_process(target: Target, requests: list[bytes], load: Load, start_at: float | None):
    """(responses, CPU seconds, max loop lag, wall seconds), both counted from the first send."""
    responses, lag, started, cpu_started = asyncio.run(_run(target, requests, load, start_at))
    return responses, _cpu_seconds() - cpu_started, lag, time.perf_counter() - started


def run_load(target: Target, requests: list[bytes], load: Load) -> ClientRun:
    """Send every request with the given load pattern; block until all have ended."""
    # never more processes than requests, nor (closed loop) than requests in flight
    n = min(load.processes, len(requests), load.concurrency if load.request_rate is None else load.processes)
    if n <= 1:
        responses, cpu_s, lag, wall_s = _run_process(target, requests, load, None)
        return ClientRun(responses, wall_s, cpu_s, lag, 1)
    load = dataclasses.replace(load, processes=n)
    shares = [requests[i::n] for i in range(n)]
    start_at = time.perf_counter() + 1.0  # room for the processes to start
    with multiprocessing.get_context("spawn").Pool(n) as pool:
        parts = pool.starmap(_run_process, [(target, shares[i], load.share(i), start_at) for i in range(n)])
    responses: list[RawResponse] = [None] * len(requests)  # type: ignore[list-item]
    for i, (part, *_rest) in enumerate(parts):
        responses[i::n] = part
    return ClientRun(
        responses,
        wall_s=max(p[3] for p in parts),
        cpu_s=sum(p[1] for p in parts),
        max_loop_lag_s=max(p[2] for p in parts),
        processes=n,
    )


# -- after the run: raw responses -> request results -----------------------------------------


@dataclass
class ParsedResponse:
    result: RequestResult
    prompt_tokens: int | None = None
    finish_reason: str | None = None  # "length": the request reached its max_tokens


def _error_text(raw: RawResponse) -> str:
    body = raw.body.decode("utf-8", "replace").strip()
    try:
        detail = json.loads(body)
        detail = detail.get("error", detail) if isinstance(detail, dict) else detail
        if isinstance(detail, dict):
            detail = detail.get("message", detail)
        body = str(detail)
    except ValueError:
        pass
    return f"HTTP {raw.status}: {body[:300] or '(empty body)'}"


def _chunk_tokens(choice: dict, api: str) -> int | None:
    """Tokens this choice carries, where the server says: its token ids (vLLM's
    return_token_ids), else its logprobs entries (one per token); None where it does not say."""
    token_ids = choice.get("token_ids")
    if isinstance(token_ids, list):
        return len(token_ids)
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict):
        entries = logprobs.get("tokens") if api == COMPLETIONS else logprobs.get("content")
        if isinstance(entries, list):
            return len(entries)
    return None


def _choice_text(choice: dict, api: str) -> str | None:
    """The choice's output text; None when the event carries no output field at all."""
    if api == COMPLETIONS:
        return choice.get("text")
    delta = choice.get("delta") or {}
    if "role" in delta and not delta.get("content"):
        return None  # the role announcement that opens a chat stream: no token
    return delta.get("content")


def reconcile_arrivals(arrivals: list[tuple[float, int | None, str]], usage_tokens: int | None) -> tuple[list, str]:
    """(time, tokens) per token arrival, and how the counts were known.

    Counts the server gave (token ids, logprobs) are exact. Otherwise every event that carries
    a choice is one token (a token that ends inside a UTF-8 character arrives as an event with
    empty text), checked against the final usage: events beyond it with empty text are
    bookkeeping (a finish-only event), not tokens; fewer events than tokens means several
    tokens per event, spread evenly.
    """
    if arrivals and all(n is not None for _, n, _ in arrivals):
        return [(t, n) for t, n, _ in arrivals if n > 0], "server_counts"
    events = list(arrivals)
    if usage_tokens is None:
        return [(t, 1) for t, _, _ in events], "one_per_event"
    surplus = len(events) - usage_tokens
    for index in range(len(events) - 1, -1, -1):  # drop empty events from the end first
        if surplus <= 0:
            break
        if not events[index][2]:
            del events[index]
            surplus -= 1
    if len(events) == usage_tokens:
        return [(t, 1) for t, _, _ in events], "one_per_event"
    share = usage_tokens / len(events) if events else 0
    return [(t, share) for t, _, _ in events], "spread"


def parse_response(raw: RawResponse, api: str = COMPLETIONS, max_tokens: int | None = None) -> ParsedResponse:
    """Text, token arrival times and the server's usage from one raw response.

    A token arrives with every event that carries a choice, whatever its text (see
    reconcile_arrivals); the role-only and usage-only events servers send carry none. Without usage
    the count is max_tokens when the server says it stopped there (finish_reason "length"),
    else unknown (None).
    """
    result = RequestResult(t_send=raw.t_send)
    parsed = ParsedResponse(result)
    if raw.status is not None and raw.status != 200:
        result.success, result.error = False, _error_text(raw)
        return parsed
    texts, arrivals, streamed_usage = [], [], []
    for arrived, payload in raw.events:
        try:
            event = json.loads(payload)
        except ValueError:
            result.success, result.error = False, f"unparseable event from the server: {payload[:200]!r}"
            return parsed
        if "error" in event:
            error = event["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            result.success, result.error = False, f"server error mid-stream: {message}"
            return parsed
        for choice in event.get("choices") or ():
            text = _choice_text(choice, api)
            count = _chunk_tokens(choice, api)
            if text is not None or count:
                texts.append(text or "")
                arrivals.append((arrived, count, text or ""))
            parsed.finish_reason = choice.get("finish_reason") or parsed.finish_reason
        usage = event.get("usage")
        if usage:
            result.output_tokens = usage.get("completion_tokens", result.output_tokens)
            parsed.prompt_tokens = usage.get("prompt_tokens", parsed.prompt_tokens)
            if event.get("choices"):  # continuous usage: a running count with each token event
                streamed_usage.append(usage.get("completion_tokens"))
    if result.output_tokens is None and parsed.finish_reason == "length" and max_tokens:
        result.output_tokens = max_tokens  # no usage (llama.cpp's server), but it stopped at max_tokens
    if streamed_usage and len(streamed_usage) == len(arrivals) and None not in streamed_usage:
        counts = [b - a for a, b in zip([0, *streamed_usage], streamed_usage, strict=False)]
        arrivals = [(t, n, text) for (t, _, text), n in zip(arrivals, counts, strict=True)]
    tokens, result.counted_by = reconcile_arrivals(arrivals, result.output_tokens)
    result.chunk_times = [t for t, _ in tokens]
    result.chunk_tokens = [n for _, n in tokens]
    result.text = "".join(texts)
    if raw.error:
        result.success, result.error = False, raw.error
    elif raw.status is None:
        result.success, result.error = False, "no response from the server"
    return parsed
