"""``readme-jax bench-serve``: measure a running server over HTTP the way vLLM's ``bench serve`` does.

Every request streams (``stream: true``, ``stream_options.include_usage``). Per request, with ``time.perf_counter``
stamps in this client:

- TTFT: send -> the first chunk that has ``choices``;
- ITL: every gap between consecutive such chunks;
- E2EL: send -> the end of the stream;
- TPOT: (E2EL - TTFT) / (output tokens - 1), for requests with more than one output token; the output token
  count is the usage chunk's ``completion_tokens``.

Per run: completed and failed requests, 429 rejections, request throughput (completed / duration), output token
throughput, total token throughput ((prompt + output tokens) / duration), each latency's mean, p50, p95, p99 in
ms (``serve.core.metrics.describe``), and the server's expert-cache counters over the run (the difference of
``/v1/readme/stats`` before and after). Arrivals: ``--request-rate`` inf sends everything at once; otherwise gaps
are gamma-distributed with shape ``--burstiness`` and mean 1 / rate (1 = Poisson), as vLLM draws them;
``--max-concurrency`` bounds the requests in flight (closed loop).
"""

import asyncio
import json
import math
import random
import time

from readme_jax.errors import ReadmeJaxError
from serve.core.metrics import describe

CACHE_KEYS = ("hits", "misses", "loads", "evictions", "prefetches", "bytes_moved", "stall_s", "iterations")
WORDS = ("the expert cache keeps recent weights close while the router picks one expert per token and the "
         "scheduler groups requests that share it").split()


def synthetic_prompts(n: int, prompt_tokens: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(max(1, prompt_tokens))) for _ in range(n)]


def heldout_prompts(n: int, prompt_tokens: int, seed: int) -> list[str]:
    """Held-out text of every available domain, round-robin, cut to about 4 characters per prompt token."""
    from readme_jax.data import available_domains, split_domain

    chars = 4 * prompt_tokens
    per_domain = []
    for domain in available_domains():
        texts = [doc.text[i:i + chars] for doc in split_domain(domain).heldout
                 for i in range(0, max(len(doc.text) - chars // 2, 1), chars)]
        texts = [t for t in texts if t.strip()]
        random.Random(seed).shuffle(texts)
        per_domain.append(texts)
    if not any(per_domain):
        raise ReadmeJaxError("no held-out text found: run `make setup` (it fetches the domain corpora)")
    out, rank = [], 0
    while len(out) < n:
        for texts in per_domain:
            if rank < len(texts) and len(out) < n:
                out.append(texts[rank])
        rank += 1
        if rank > max(len(t) for t in per_domain):
            rank = 0  # fewer pieces than requests: reuse them
    return out


def workload(kind: str, n: int, prompt_tokens: int, max_tokens: int, seed: int) -> list[tuple[object, int]]:
    """(prompt: str or token ids, max_tokens) per request."""
    if n < 1 or prompt_tokens < 1 or max_tokens < 1:
        raise ReadmeJaxError("--num-prompts, --prompt-tokens and --max-tokens must be >= 1")
    if kind == "synthetic":
        return [(p, max_tokens) for p in synthetic_prompts(n, prompt_tokens, seed)]
    if kind == "heldout":
        return [(p, max_tokens) for p in heldout_prompts(n, prompt_tokens, seed)]
    if kind.endswith(".jsonl"):
        from serve.sim.trace import read_trace

        specs = read_trace(kind).requests
        if not specs or specs[0].prompt_ids is None:
            raise ReadmeJaxError(f"{kind}: the trace has no prompt_ids to send")
        return [(list(s.prompt_ids), len(s.output_experts)) for s in (specs * (n // len(specs) + 1))[:n]]
    raise ReadmeJaxError(f"--workload {kind!r}: expected heldout, synthetic or a trace .jsonl")


def arrival_times(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    if not rate > 0 or not burstiness > 0:
        raise ReadmeJaxError("--request-rate and --burstiness must be > 0")
    if math.isinf(rate):
        return [0.0] * n
    rng, t, out = random.Random(seed), 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.gammavariate(burstiness, 1.0 / (rate * burstiness))
    return out


async def one_request(client, url: str, payload: dict, timeout_s: float) -> dict:
    out = {"ok": False, "status": None, "ttft": None, "itl": [], "latency": None, "output_tokens": 0,
           "prompt_tokens": 0, "error": None}
    start = time.perf_counter()
    last = None
    try:
        async with client.stream("POST", url, json=payload, timeout=timeout_s) as response:
            out["status"] = response.status_code
            if response.status_code != 200:
                out["error"] = (await response.aread()).decode("utf-8", "replace")[:300]
                return out
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, ": comment" pings
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    out["error"] = chunk["error"].get("message")
                    return out
                now = time.perf_counter()
                if chunk.get("choices"):
                    if last is None:
                        out["ttft"] = now - start
                    else:
                        out["itl"].append(now - last)
                    last = now
                    out["output_tokens"] += 1
                if chunk.get("usage"):
                    out["output_tokens"] = chunk["usage"]["completion_tokens"]
                    out["prompt_tokens"] = chunk["usage"]["prompt_tokens"]
        out["latency"] = time.perf_counter() - start
        out["ok"] = out["ttft"] is not None
    except Exception as exc:  # a failed request is counted, never the end of the run
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


async def run(url: str, endpoint: str, model: str | None, requests, arrivals, max_concurrency, timeout_s,
              chat: bool | None = None) -> dict:
    import httpx

    chat = endpoint.endswith("chat/completions") if chat is None else chat
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout_s) as client:
        if model is None:
            model = (await client.get("/v1/models")).json()["data"][0]["id"]
        before = await _server_stats(client)
        gate = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        t0 = time.perf_counter()

        async def send(i, prompt, max_tokens):
            await asyncio.sleep(max(0.0, arrivals[i] - (time.perf_counter() - t0)))
            payload = {"model": model, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
                       "stream_options": {"include_usage": True}}
            if chat:
                payload["messages"] = [{"role": "user", "content": prompt}]
            else:
                payload["prompt"] = prompt
            if gate is None:
                return await one_request(client, endpoint, payload, timeout_s)
            async with gate:
                return await one_request(client, endpoint, payload, timeout_s)

        results = await asyncio.gather(*(send(i, p, m) for i, (p, m) in enumerate(requests)))
        duration = time.perf_counter() - t0
        after = await _server_stats(client)
    return summarize(results, duration, before, after, model, url, endpoint, max_concurrency)


async def _server_stats(client):
    try:
        response = await client.get("/v1/readme/stats")
        return response.json().get("stats") if response.status_code == 200 else None
    except Exception:  # another OpenAI-compatible server without our stats endpoint
        return None


def summarize(results, duration, before, after, model, url, endpoint, max_concurrency) -> dict:
    done = [r for r in results if r["ok"]]
    ms = lambda xs: {k: v * 1000.0 for k, v in describe(xs).items()}  # noqa: E731
    out_tokens = sum(r["output_tokens"] for r in done)
    in_tokens = sum(r["prompt_tokens"] for r in done)
    result = {
        "model": model, "url": url, "endpoint": endpoint, "max_concurrency": max_concurrency,
        "requests": len(results), "completed": len(done), "failed": len(results) - len(done),
        "rejected_429": sum(r["status"] == 429 for r in results),
        "errors": sorted({r["error"] for r in results if r["error"]})[:5],
        "duration_s": duration, "prompt_tokens": in_tokens, "output_tokens": out_tokens,
        "request_throughput": len(done) / duration, "output_throughput": out_tokens / duration,
        "total_token_throughput": (in_tokens + out_tokens) / duration,
        "ttft_ms": ms([r["ttft"] for r in done]),
        "tpot_ms": ms([(r["latency"] - r["ttft"]) / (r["output_tokens"] - 1) for r in done if r["output_tokens"] > 1]),
        "itl_ms": ms([g for r in done for g in r["itl"]]),
        "e2el_ms": ms([r["latency"] for r in done]),
    }
    if before is not None and after is not None:
        cache = {k: after[k] - before[k] for k in CACHE_KEYS if k in after and k in before}
        accesses = cache.get("hits", 0) + cache.get("misses", 0)
        cache["hit_ratio"] = cache["hits"] / accesses if accesses and "hits" in cache else None
        result["server_cache"] = cache
    return result


def run_from_args(args) -> dict:
    requests = workload(args.workload, args.num_prompts, args.prompt_tokens, args.max_tokens, args.seed)
    arrivals = arrival_times(len(requests), args.request_rate, args.burstiness, args.seed)
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ReadmeJaxError(f"--max-concurrency {args.max_concurrency} must be >= 1")
    result = asyncio.run(run(args.url.rstrip("/"), args.endpoint, args.model, requests, arrivals,
                             args.max_concurrency, args.timeout_s))
    result.update(workload=args.workload, request_rate=args.request_rate, burstiness=args.burstiness)
    return _jsonable(result)


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def format_table(result: dict) -> str:
    def row(name, stats):
        cells = "".join(f"{stats[k]:>10.1f}" if stats[k] is not None else f"{'-':>10}"
                        for k in ("mean", "p50", "p95", "p99"))
        return f"  {name:<6}{cells}"

    lines = [f"bench-serve: {result['completed']}/{result['requests']} completed, {result['failed']} failed "
             f"({result['rejected_429']} x 429) in {result['duration_s']:.2f} s, {result['endpoint']} at "
             f"{result['url']}, model {result['model']}",
             f"throughput: {result['request_throughput']:.2f} req/s, {result['output_throughput']:.1f} output tok/s, "
             f"{result['total_token_throughput']:.1f} total tok/s",
             f"  {'ms':<6}{'mean':>10}{'p50':>10}{'p95':>10}{'p99':>10}"]
    lines += [row(name.upper(), result[f"{name}_ms"]) for name in ("ttft", "tpot", "itl", "e2el")]
    if cache := result.get("server_cache"):
        lines.append("server expert cache over the run: " + ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in cache.items() if v is not None))
    for error in result["errors"]:
        lines.append(f"  error: {error}")
    return "\n".join(lines)


def plot(result: dict, path):
    """A bar chart of each latency's mean/p50/p95/p99 (ms)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from readme_jax import atomic

    names = ("ttft", "tpot", "itl", "e2el")
    fig, axes = plt.subplots(1, 4, figsize=(12, 3), constrained_layout=True)
    for ax, name in zip(axes, names):
        stats = result[f"{name}_ms"]
        keys = ("mean", "p50", "p95", "p99")
        ax.bar(keys, [stats[k] or 0.0 for k in keys], color="#4477aa")
        ax.set_title(f"{name.upper()} (ms)")
    fig.suptitle(f"bench-serve {result['model']}: {result['completed']} requests, "
                 f"{result['output_throughput']:.1f} output tok/s", fontsize=10)
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
