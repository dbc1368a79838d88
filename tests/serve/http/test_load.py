"""Load: 200 concurrent streaming requests on loopback, served by the real engine over a tiny MoE (2 of 4 experts
resident), with a bounded waiting queue. Zero lost (each completes with all its tokens or gets a 429 with
Retry-After), the queue never exceeds its bound, and /metrics equals what the clients saw."""

import asyncio
import json

import httpx

from tests.serve.http.conftest import StreamTally, live_server, metric_value

N, MAX_WAITING, MAX_TOKENS = 200, 24, 6


async def _stream(client, model, i):
    body = {"model": model, "prompt": f"request {i}", "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return {"status": r.status_code, "retry_after": r.headers.get("retry-after"),
                    "body": json.loads(await r.aread())}
        tally = StreamTally()
        async for line in r.aiter_lines():
            tally.feed(line)
        return {"status": 200, "chunks": tally.chunks, "usage": tally.usage, "finish": tally.finish,
                "done": tally.done}


def test_200_concurrent_streams_none_lost_queue_bounded_metrics_match(real_engine):
    eng = real_engine
    with live_server(eng, max_waiting=MAX_WAITING) as (url, state):
        async def main():
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
            async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
                return await asyncio.gather(*(_stream(client, state.model_name, i) for i in range(N)))

        results = asyncio.run(main())
        metrics = httpx.get(url + "/metrics").text
        snap = httpx.get(url + "/v1/readme/stats").json()
    ok = [r for r in results if r["status"] == 200]
    rejected = [r for r in results if r["status"] == 429]
    assert len(ok) + len(rejected) == N, [r for r in results if r["status"] not in (200, 429)][:3]
    assert len(ok) >= MAX_WAITING and rejected, (len(ok), len(rejected))
    for r in rejected:
        assert r["retry_after"] and r["body"]["error"]["code"] == 429
    for r in ok:  # every token arrived: one chunk per token, the usage chunk agrees, the stream ended
        assert r["done"] and r["finish"] in ("stop", "length") and r["chunks"] == r["usage"]["completion_tokens"]
        if r["finish"] == "length":
            assert r["chunks"] == MAX_TOKENS
    assert snap["max_waiting_seen"] <= MAX_WAITING and snap["live"] == 0
    assert metric_value(metrics, "readme:generation_tokens_total") == sum(r["chunks"] for r in ok)
    assert metric_value(metrics, "readme:request_success_total") == len(ok)
    assert metric_value(metrics, "readme:requests_rejected_total") == len(rejected)
    assert metric_value(metrics, "readme:prompt_tokens_total") == sum(r["usage"]["prompt_tokens"] for r in ok)
    assert metric_value(metrics, "readme:time_to_first_token_seconds_count") == len(ok)
    assert metric_value(metrics, "readme:e2e_request_latency_seconds_count") == len(ok)
