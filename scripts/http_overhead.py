"""Server overhead: one greedy request alone, tokens/s through the engine in-process vs streamed over HTTP.

    PYTHONPATH=. python scripts/http_overhead.py --model default --max-tokens 64 --repeats 3

Both paths use the same engine object; the runs are interleaved (in-process, HTTP, in-process, ...) so that the
machine's drift hits both. The engine is not thread-safe, so each HTTP run gets a fresh server (and engine
thread) that is shut down before the next in-process run; its start-up is outside the measured span. Tokens/s = generated tokens / (last token time - submit time), the same span on both
sides (HTTP: the client's send to its last token chunk).
"""

import argparse
import asyncio
import json
import time

from readme_jax.generate import SamplingParams


def in_process(eng, ids, n):
    t0 = time.perf_counter()
    rid = eng.submit(ids, SamplingParams(max_new_tokens=n, temperature=0.0))
    count, last = 0, t0
    while eng.has_work():
        for ev in eng.step():
            if ev.request_id == rid and ev.token_id is not None:
                count, last = count + 1, time.perf_counter()
    return count / (last - t0), count


def over_http(url, model, prompt, n):
    from serve.http import bench

    payload = {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0.0, "stream": True,
               "stream_options": {"include_usage": True}}

    async def go():
        import httpx

        async with httpx.AsyncClient(base_url=url) as client:
            return await bench.one_request(client, "/v1/completions", payload, 600)

    r = asyncio.run(go())
    span = r["ttft"] + sum(r["itl"])
    return r["output_tokens"] / span, r["output_tokens"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="default")
    p.add_argument("--slots", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompt", default="The history of the printing press")
    args = p.parse_args()
    from serve.engine import Engine
    from tests.serve.http.conftest import live_server

    eng = Engine.load(args.model, slots=args.slots)
    ids = eng.tokenizer.encode(args.prompt, add_special_tokens=True)
    in_process(eng, ids, args.max_tokens)  # warm-up: compiles
    rows = []
    for _ in range(args.repeats):
        # the engine is not thread-safe: the in-process run happens while no server (no engine thread) is up
        row = {"in_process": in_process(eng, ids, args.max_tokens)}
        with live_server(eng) as (url, state):
            row["http"] = over_http(url, state.model_name, args.prompt, args.max_tokens)
        rows.append(row)
    local = sorted(r["in_process"][0] for r in rows)[len(rows) // 2]
    remote = sorted(r["http"][0] for r in rows)[len(rows) // 2]
    print(json.dumps({"model": args.model, "max_tokens": args.max_tokens, "runs": rows,
                      "median_tok_s_in_process": local, "median_tok_s_http": remote, "ratio": remote / local}))


if __name__ == "__main__":
    main()
