"""The streaming client against a stand-in server whose timing is known (tests/fake_openai_server.py),
plus its HTTP/SSE parsing fed byte by byte."""

import asyncio
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.engines.client import CHAT, Load, RawResponse, Target, _Connection, parse_response, run_load
from pipeline.engines.server import free_port

FAKE_SERVER = Path(__file__).with_name("fake_openai_server.py")
TTFT, ITL, TOKENS = 0.060, 0.004, 16


def start_fake_server(*args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, str(FAKE_SERVER), "--port", str(port), *args])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/stats", timeout=1).read()
            return process, url
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("the fake server did not start")


@pytest.fixture(scope="module")
def scheduled_server():
    process, url = start_fake_server("--ttft", str(TTFT), "--itl", str(ITL))
    yield url
    process.kill()
    process.wait()


def completion(max_tokens: int = TOKENS, prompt=None) -> dict:
    return {
        "model": "fake-model",
        "prompt": prompt if prompt is not None else list(range(4, 36)),
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def parsed_run(target: Target, count: int, load: Load, body: dict | None = None):
    run = run_load(target, [target.request_bytes(body or completion())] * count, load)
    return run, [parse_response(raw, target.api) for raw in run.responses]


def send_log(url: str, results) -> list[list[float]]:
    """The server's own send times of each result's events, matched by arrival (same clock as the client's).

    A loaded host makes the stand-in late, not the client wrong: comparing the client's stamps with
    what the server really did keeps these tests about the client."""
    streams = json.load(urllib.request.urlopen(url + "/stats", timeout=10))
    matched = []
    for r in results:
        arrived_after_send = [s for s in streams if s["arrived"] >= r.t_send]
        matched.append(min(arrived_after_send, key=lambda s: s["arrived"])["sent"])
    return matched


def delivery_lags(result, sent: list[float]) -> list[float]:
    """Seconds from the server's write of each event to the client's stamp of it."""
    assert len(result.chunk_times) == len(sent)
    return [t - s for t, s in zip(result.chunk_times, sent, strict=True)]


@pytest.mark.parametrize("concurrency", [1, 4])
def test_measured_times_match_the_servers_schedule(scheduled_server, concurrency):
    target = Target.from_base_url(scheduled_server + "/v1")
    run, parsed = parsed_run(target, 2 * concurrency, Load(concurrency=concurrency))
    results = [p.result for p in parsed]
    assert all(r.success for r in results), [r.error for r in results]
    # the server never sends before it is due, and the client never stamps before the server sent
    assert all(r.chunk_times[0] - r.t_send >= TTFT for r in results)
    lags = [delivery_lags(r, sent) for r, sent in zip(results, send_log(scheduled_server, results), strict=True)]
    assert min(min(lag) for lag in lags) >= 0
    # each event stamped when it arrived: a few ms on a loaded 2-core box, never one inter-token gap per
    # event (the sub-ms figures come from tests/benchmarks/bench_client.py)
    assert statistics.median(lag for lag_r in lags for lag in lag_r) < 0.004
    for p in parsed:
        assert len(p.result.chunk_times) == TOKENS and p.result.output_tokens == TOKENS
        assert p.prompt_tokens == 32 and p.finish_reason is None
        assert p.result.text == "".join(f" w{i}" for i in range(TOKENS))
    assert run.describe()["processes"] == 1 and not run.describe()["saturated"]


def test_waiting_for_a_slot_is_not_time_to_first_token(scheduled_server):
    """Three requests through one slot: the third waits two whole requests, yet its TTFT is the server's."""
    target = Target.from_base_url(scheduled_server)
    _, parsed = parsed_run(target, 3, Load(concurrency=1))
    sends = [p.result.t_send for p in parsed]
    assert sends[2] - sends[0] > 2 * (TTFT + (TOKENS - 1) * ITL)
    # its TTFT is far below the time it waited (the margin absorbs a loaded host's lateness)
    assert parsed[2].result.chunk_times[0] - sends[2] < TTFT + (sends[2] - sends[0]) / 4


def test_open_loop_sends_on_a_seeded_poisson_schedule(scheduled_server):
    import random

    target = Target.from_base_url(scheduled_server)
    rate, count = 40.0, 12
    _, parsed = parsed_run(target, count, Load(concurrency=2, request_rate=rate, seed=7), completion(max_tokens=4))
    sends = [p.result.t_send for p in parsed]
    rng = random.Random(7)
    planned = [0.0]
    for _ in range(count - 1):
        planned.append(planned[-1] + rng.expovariate(rate))
    # sends follow the planned arrivals, not the end of earlier requests (open loop)
    offsets = [s - sends[0] - p for s, p in zip(sends, planned, strict=True)]
    # a closed loop would fall behind by a whole request (~70 ms) per slot reuse; a loaded host by a few ms
    assert statistics.median(abs(o) for o in offsets) < 0.005 and max(abs(o) for o in offsets) < 0.04, offsets
    assert all(p.result.success and len(p.result.chunk_times) == 4 for p in parsed)


def test_several_client_processes_merge_in_request_order(scheduled_server):
    target = Target.from_base_url(scheduled_server)
    bodies = [completion(max_tokens=2 + i) for i in range(6)]
    run = run_load(target, [target.request_bytes(b) for b in bodies], Load(concurrency=4, processes=2))
    assert run.processes == 2
    assert [len(parse_response(r).result.chunk_times) for r in run.responses] == [2, 3, 4, 5, 6, 7]


def test_chat_api_reads_delta_content(scheduled_server):
    target = Target.from_base_url(scheduled_server, api=CHAT)
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 5}
    _, parsed = parsed_run(target, 1, Load(), {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert parsed[0].result.text == " w0 w1 w2 w3 w4" and parsed[0].prompt_tokens == 3
    # the role announcement that opens the stream is no token
    assert len(parsed[0].result.chunk_times) == 5 and parsed[0].result.chunk_tokens == [1] * 5


@pytest.mark.parametrize("api", ["completions", CHAT])
@pytest.mark.parametrize("token_ids", [False, True])
def test_tokens_whose_text_is_held_back_still_arrive_on_time(api, token_ids):
    """Every 3rd token ends inside a character: its event has empty text. It is a token all the same."""
    itl = 0.030  # a held-back token stamped with the next one would be one whole gap late
    process, url = start_fake_server("--ttft", str(TTFT), "--itl", str(itl), "--hold-every", "3")
    try:
        target = Target.from_base_url(url, api=api)
        body = (
            completion()
            if api != CHAT
            else {
                "model": "fake-model",
                "messages": [{"role": "user", "content": "a b"}],
                "max_tokens": TOKENS,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        )
        if token_ids:
            body["return_token_ids"] = True
        _, (parsed,) = parsed_run(target, 1, Load(), body)
        (sent,) = send_log(url, [parsed.result])
    finally:
        process.kill()
        process.wait()
    result = parsed.result
    assert result.success and result.output_tokens == TOKENS
    assert len(result.chunk_times) == TOKENS and result.chunk_tokens == [1] * TOKENS
    assert result.counted_by == ("server_counts" if token_ids else "one_per_event")
    assert result.text == "".join(f" w{i}" for i in range(TOKENS))  # the held-back text came later
    lags = delivery_lags(result, sent)
    held = lags[2::3]  # the empty-text events
    assert min(lags) >= 0 and statistics.median(held) < itl / 3, held  # stamped on arrival, not with the next


def events(*payloads: dict) -> RawResponse:
    return RawResponse(
        t_send=0.0, status=200, events=[(0.1 * (i + 1), json.dumps(p).encode()) for i, p in enumerate(payloads)]
    )


USAGE = {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}}


@pytest.mark.parametrize(
    ("api", "token"),
    [("completions", lambda text: {"text": text}), (CHAT, lambda text: {"delta": {"content": text}})],
)
def test_a_stream_of_empty_events_is_a_success_with_the_usage_count(api, token):
    raw = events(*({"choices": [token("")]} for _ in range(3)), USAGE)
    result = parse_response(raw, api).result
    assert result.success and result.text == "" and result.output_tokens == 3
    assert result.chunk_times == pytest.approx([0.1, 0.2, 0.3]) and result.chunk_tokens == [1, 1, 1]


def test_role_only_and_usage_only_events_carry_no_tokens():
    role = {"choices": [{"delta": {"role": "assistant", "content": ""}}]}
    raw = events(
        role,
        {"choices": [{"delta": {"content": "a"}}]},
        {"choices": [{"delta": {"content": ""}}]},
        {"choices": [{"delta": {"content": "b"}}]},
        USAGE,
    )
    result = parse_response(raw, CHAT).result
    assert result.chunk_times == pytest.approx([0.2, 0.3, 0.4]) and result.output_tokens == 3
    usage_only = parse_response(events({"choices": [{"text": "a"}]}, USAGE), "completions").result
    assert usage_only.chunk_times == pytest.approx([0.1]) and usage_only.chunk_tokens == [3]
    assert usage_only.counted_by == "spread"  # one event for three tokens: several tokens per event


def test_token_counts_the_server_streams_are_used_as_they_are():
    ids = events(
        {"choices": [{"text": "", "token_ids": [7, 8]}]},
        {"choices": [{"text": "ab", "token_ids": [9]}]},
        {"choices": [{"text": "", "token_ids": [], "finish_reason": "length"}]},
        USAGE,
    )
    result = parse_response(ids, "completions").result
    assert result.chunk_tokens == [2, 1] and result.chunk_times == pytest.approx([0.1, 0.2])
    logprobs = events(
        {"choices": [{"text": "x", "logprobs": {"tokens": ["x", "y"]}}]},
        {"choices": [{"text": "", "logprobs": {"tokens": ["z"]}}]},
        USAGE,
    )
    assert parse_response(logprobs, "completions").result.chunk_tokens == [2, 1]
    running = events(
        {"choices": [{"text": "a"}], "usage": {"completion_tokens": 1}},
        {"choices": [{"text": ""}], "usage": {"completion_tokens": 3}},
        USAGE,
    )
    assert parse_response(running, "completions").result.chunk_tokens == [1, 2]  # continuous usage stats


def test_a_finish_only_event_beyond_the_usage_count_is_no_token():
    raw = events(
        {"choices": [{"text": "a"}]},
        {"choices": [{"text": "b"}]},
        {"choices": [{"text": "c"}]},
        {"choices": [{"text": "", "finish_reason": "length"}]},
        USAGE,
    )
    result = parse_response(raw, "completions").result
    assert result.chunk_times == pytest.approx([0.1, 0.2, 0.3]) and result.chunk_tokens == [1, 1, 1]


def test_http_errors_and_refused_connections_are_recorded_per_request():
    process, url = start_fake_server("--status", "500")
    try:
        target = Target.from_base_url(url)
        _, parsed = parsed_run(target, 2, Load(concurrency=2))
        assert [p.result.success for p in parsed] == [False, False]
        assert parsed[0].result.error == "HTTP 500: injected failure"
    finally:
        process.kill()
        process.wait()
    _, parsed = parsed_run(target, 1, Load(timeout_s=5))  # the server is gone now
    assert not parsed[0].result.success and parsed[0].result.error.startswith("cannot connect to 127.0.0.1")


def test_a_server_dying_mid_stream_ends_its_requests_with_an_error():
    process, url = start_fake_server("--die-after", "0", "--ttft", "0", "--itl", "0.01")
    try:
        _, parsed = parsed_run(Target.from_base_url(url), 1, Load())
    finally:
        process.wait(10)
    result = parsed[0].result
    assert not result.success and "connection closed before the response was complete" in result.error
    assert 0 < len(result.chunk_times) < TOKENS  # what arrived before the death is still there


# -- parsing, fed by hand -------------------------------------------------------------------


def feed(pieces: list[bytes], connection: _Connection | None = None) -> RawResponse:
    """Feed a response to the protocol in the given pieces, as network reads."""
    loop = asyncio.new_event_loop()
    try:
        raw, done = RawResponse(), loop.create_future()
        connection = connection or _Connection()
        connection.connection_made(FakeTransport())
        connection.begin(raw, done)
        for piece in pieces:
            connection.data_received(piece)
        assert done.done(), "the response should be complete"
        return raw
    finally:
        loop.close()


class FakeTransport:
    def close(self):
        pass


def sse_response(events: list[str], separator: str = "\n") -> bytes:
    body = b"".join(f"data: {e}{separator}{separator}".encode() for e in events)
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]  # chunk borders fall inside events
    chunks = b"".join(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" for piece in pieces)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + chunks + b"0\r\n\r\n"


@pytest.mark.parametrize("separator", ["\n", "\r\n"])
def test_events_split_anywhere_across_reads_parse_the_same(separator):
    events = [json.dumps({"choices": [{"text": t}]}) for t in ("a", "b", "", "c")]
    events += [json.dumps({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}), "[DONE]"]
    response = sse_response(events, separator)
    for size in (1, 3, 64, len(response)):
        raw = feed([response[i : i + size] for i in range(0, len(response), size)])
        parsed = parse_response(raw)
        assert raw.error == "" and raw.status == 200
        # four events for the three tokens the usage counts: the empty one is bookkeeping, no token
        assert parsed.result.text == "abc" and len(parsed.result.chunk_times) == 3
        assert parsed.result.output_tokens == 3 and parsed.prompt_tokens == 9


def test_a_body_end_sent_apart_from_the_last_chunk_is_not_read_as_the_next_response():
    """llama-server writes the empty line that ends a chunked body apart from its last chunk; read
    as the start of the next response on that connection, it failed the next request (before the
    server's close, after which a request is retried). Such a connection is not reused."""
    response = sse_response([json.dumps({"choices": [{"text": "a"}]}), "[DONE]"])
    whole, apart = _Connection(), _Connection()
    assert feed([response], whole).error == "" and not whole.closed  # kept for the next request
    assert feed([response[:-2]], apart).error == "" and apart.closed  # complete, but not reused
    assert parse_response(feed([response[:-2]])).result.text == "a"


def test_an_error_event_mid_stream_fails_the_request():
    events = [json.dumps({"choices": [{"text": "a"}]}), json.dumps({"error": {"message": "out of KV cache"}})]
    parsed = parse_response(feed([sse_response(events)]))
    assert not parsed.result.success and parsed.result.error == "server error mid-stream: out of KV cache"


def test_base_url_forms():
    assert Target.from_base_url("http://h:81/v1").path == "/v1/completions"
    assert Target.from_base_url("http://h:81", api=CHAT).path == "/v1/chat/completions"
    assert Target.from_base_url("http://h:81/proxy/v1/").path == "/proxy/v1/completions"
    with pytest.raises(ValueError, match="no https"):
        Target.from_base_url("https://h/v1")
