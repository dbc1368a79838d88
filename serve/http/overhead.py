"""``readme-jax bench-serve --overhead MODEL``: what the HTTP layer costs one streaming request, side by side.

One process loads the engine once and measures the same request (token ids, greedy, ``max_tokens``) both ways:

- in process: ``Engine.submit`` then ``Engine.step`` until it ends, a ``time.perf_counter`` stamp as each token
  comes back;
- over HTTP: a uvicorn server on loopback over that same engine (its engine thread, the app of ``readme-jax
  serve``), the request streamed by the benchmark client (``serve.http.bench.one_request``).

Both report decode tokens/s = 1 / TPOT, TPOT = (last token - first token) / (tokens - 1) in process and
(E2EL - TTFT) / (tokens - 1) over HTTP (vLLM's definition), so prefill and first expert loads stay out of it.
The in-process runs go before and after the HTTP ones (the server owns the engine while it runs), one warm-up
each first; the figures are medians.
"""

import asyncio
import statistics
import time

from readme_jax.errors import ReadmeJaxError


def in_process_tpot(engine, prompt_ids, max_tokens: int) -> tuple[float, int]:
    """(TPOT seconds, tokens) of one request alone, driven through the engine's own step loop."""
    from readme_jax.generate import SamplingParams

    rid = engine.submit(prompt_ids, SamplingParams(max_new_tokens=max_tokens))
    stamps = []
    while engine.has_work():
        for event in engine.step():
            if event.request_id == rid and event.token_id is not None:
                stamps.append(time.perf_counter())
    if len(stamps) < 2:
        raise ReadmeJaxError(f"the request ended after {len(stamps)} token(s): no decode step to time")
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1), len(stamps)


def http_tpot(url: str, model: str, prompt_ids, max_tokens: int) -> tuple[float, int]:
    """(TPOT seconds, tokens) of one streaming request over HTTP, as ``bench-serve`` measures it."""
    import httpx

    from serve.http.bench import one_request

    async def go():
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:
            payload = {"model": model, "prompt": list(prompt_ids), "max_tokens": max_tokens, "temperature": 0.0,
                       "stream": True, "stream_options": {"include_usage": True}}
            return await one_request(client, "/v1/completions", payload, 600)

    out = asyncio.run(go())
    if not out["ok"] or out["output_tokens"] < 2:
        raise ReadmeJaxError(f"the HTTP request failed or gave under 2 tokens: {out['error'] or out}")
    return (out["latency"] - out["ttft"]) / (out["output_tokens"] - 1), out["output_tokens"]


def measure(engine, prompt_ids, max_tokens: int = 64, repeats: int = 3) -> dict:
    """Decode tokens/s of one streaming request alone, over HTTP and in process, with the same engine."""
    from serve.http.app import ServerConfig, create_app

    if repeats < 1 or max_tokens < 2:
        raise ReadmeJaxError("the overhead check needs repeats >= 1 and max_tokens >= 2")
    local = []
    for rep in range(repeats + 1):  # rep 0 warms up (compiles, first loads)
        engine.reset()
        tpot, tokens = in_process_tpot(engine, prompt_ids, max_tokens)
        if rep:
            local.append(tpot)
    over_http = _over_http(create_app(engine, ServerConfig()), prompt_ids, max_tokens, repeats)
    for _ in range(repeats):
        engine.reset()
        local.append(in_process_tpot(engine, prompt_ids, max_tokens)[0])
    in_s, http_s = statistics.median(local), statistics.median(over_http)
    return {"prompt_tokens": len(prompt_ids), "output_tokens": tokens, "repeats": repeats,
            "in_process_tokens_per_s": 1 / in_s, "http_tokens_per_s": 1 / http_s, "ratio": in_s / http_s,
            "in_process_tpot_ms": [t * 1e3 for t in local], "http_tpot_ms": [t * 1e3 for t in over_http]}


def _over_http(app, prompt_ids, max_tokens, repeats) -> list[float]:
    from serve.http.server import in_thread

    with in_thread(app) as url:
        model = app.state.server.model_name
        out = []
        for rep in range(repeats + 1):  # rep 0 warms up the HTTP path
            tpot, _ = http_tpot(url, model, prompt_ids, max_tokens)
            if rep:
                out.append(tpot)
        return out


def format_table(result: dict) -> str:
    return "\n".join([
        f"server overhead: one streaming request alone, {result['prompt_tokens']} prompt tokens, "
        f"{result['output_tokens']} generated, median of {result['repeats']} (in process: before and after)",
        f"  {'':<12}{'tok/s':>8}  TPOT ms",
        f"  {'in process':<12}{result['in_process_tokens_per_s']:>8.1f}  "
        + " ".join(f"{t:.1f}" for t in result["in_process_tpot_ms"]),
        f"  {'over HTTP':<12}{result['http_tokens_per_s']:>8.1f}  "
        + " ".join(f"{t:.1f}" for t in result["http_tpot_ms"]),
        f"  HTTP / in process: {result['ratio']:.3f}x",
    ])
