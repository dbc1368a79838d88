"""``readme-jax bench-engine``: a workload through the real engine, for each (capacity, batching, cache) asked for.

Every run is the same workload (greedy decoding gives the same tokens whatever the policies, so every run does the
same work) served closed loop by ``concurrency`` clients or open loop at the recorded arrival times. Before the
measured runs, one untimed pass per batching policy compiles the shapes that policy's batches need (a cache
policy never changes a batch), so the measured runs compile nothing or almost nothing: the table says how much.

Calibration (``--calibrate``): the simulator's cost constants fitted to the measured iterations by non-negative
least squares, twice: with the paper's terms (duration = overhead + token_s * tokens + expert_s * distinct experts
+ load_s * experts loaded) and with the engine's (decode and prefill tokens apart, program calls, admitted
prompts; ``calibrate``). Each run's workload, teacher-forced with the tokens and experts the engine produced, is
then replayed through the simulator with each fitted model: the table compares simulated and measured mean
normalized latency.
"""

import dataclasses
import math
import random

import numpy as np

from serve.core.metrics import summarize
from serve.core.scheduler import check_prefer_resident
from serve.core.types import RequestSpec, ServeError

DEFAULT_PAIRS = ("expert-aware/belady", "expert-aware/lru", "decode-first/belady", "decode-first/lru")


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``BATCHING/CACHE,...``; BATCHING may be ``expert-aware:W``, expert-aware batching with
    ``prefer_resident=W`` (cache-aware queue choice)."""
    pairs = []
    for item in text.split(","):
        batching, sep, cache = item.strip().partition("/")
        if not sep or not batching or not cache:
            raise ServeError(f"--pairs: {item!r} is not BATCHING/CACHE (e.g. expert-aware/belady)")
        batching_settings(batching)
        pairs.append((batching, cache))
    return pairs


def batching_settings(label: str) -> dict:
    """The engine settings a batching label of ``--pairs`` stands for: ``{"batching", "prefer_resident"}``."""
    policy, sep, weight = label.partition(":")
    if not sep:
        return {"batching": policy, "prefer_resident": 0.0}
    try:
        value = float(weight)
    except ValueError:
        raise ServeError(f"--pairs: {label!r}: the weight after ':' must be a number (prefer_resident)") from None
    check_prefer_resident(value, policy)
    return {"batching": policy, "prefer_resident": value}


def heldout_workload(engine, num_requests: int, max_new_tokens: int, seed: int = 0, progress: bool = True):
    """Live request specs whose prompts are held-out text of the model's domains (lognormal lengths, the
    synthetic workload's law, clipped to the text and to the context)."""
    from readme_jax.corpus_blocks import select_domains
    from readme_jax.data.heldout_text import heldout_sequences
    from serve.sim.workload import WorkloadConfig, lognormal_length

    names = tuple(getattr(engine.cfg, "domains", ()) or ())
    if not names:
        raise ServeError("this model has no domains to draw held-out prompts from; give --trace")
    law = WorkloadConfig()
    longest = min(law.prompt_max, engine.context - max_new_tokens)
    if longest < 1:
        raise ServeError(f"--max-new-tokens={max_new_tokens} leaves no room for a prompt in the engine's context "
                         f"of {engine.context}")
    per_domain = max(2, -(-num_requests // len(names)))
    sequences = heldout_sequences(engine.tokenizer, select_domains(names), per_domain, 4096, longest, progress)
    rng = random.Random(seed)
    specs = []
    for i in range(num_requests):
        seq = sequences[rng.randrange(len(sequences))]
        n = min(lognormal_length(rng, law.prompt_mean, law.prompt_sigma, longest), len(seq.ids_T))
        specs.append(RequestSpec(f"{names[seq.domain]}-{i}", 0.0, (0,) * n, (), max_new_tokens,
                                 prompt_ids=tuple(int(t) for t in seq.ids_T[:n]), meta={"domain": names[seq.domain]},
                                 live=True))
    return specs


def trace_workload(path, max_new_tokens: int | None, limit: int | None):
    from serve.sim.trace import read_trace

    specs = read_trace(path).requests[:limit]
    out = []
    for spec in specs:
        if spec.prompt_ids is None:
            raise ServeError(f"{path}: request {spec.request_id!r} has no prompt_ids (a routing trace from "
                             "`readme-jax trace` has them)")
        n = max_new_tokens or spec.num_output_tokens
        out.append(dataclasses.replace(spec, output_experts=(), output_ids=None, max_new_tokens=n, live=True))
    return out


def run_pairs(engine, specs, pairs, concurrency, prefetch: str, progress=None) -> list[dict]:
    """One measured run per pair on ``engine`` (after one untimed pass per batching policy)."""
    from serve.engine.replay import replay

    for batching in dict.fromkeys(b for b, _ in pairs):
        engine.reset(**batching_settings(batching), cache_policy=pairs[0][1], prefetch=prefetch)
        replay(engine, specs, concurrency)
    rows = []
    for batching, cache in pairs:
        engine.reset(**batching_settings(batching), cache_policy=cache, prefetch=prefetch)
        compiles = engine.programs.compiles
        record = replay(engine, specs, concurrency, progress=progress)
        summary = summarize(record)
        stats = engine.stats()
        iterations = max(record.num_iterations, 1)
        rows.append({
            "slots": engine.slots, "batching": batching, "cache": cache, "prefetch": prefetch,
            "summary": summary, "stats": stats, "compiles_in_run": engine.programs.compiles - compiles,
            "host_ms_per_iteration": 1e3 * sum(record.batch_host_s) / iterations,
            "stall_s": sum(record.batch_stall_s), "record": record,
            "loads_per_iteration": _loads_per_iteration(engine, record.num_iterations),
        })
    return rows


def _loads_per_iteration(engine, iterations: int) -> list[int]:
    loads = [0] * iterations
    if engine.store is not None:
        for entry in engine.store.log:
            if entry.op == "load" and entry.iteration < iterations:
                loads[entry.iteration] += 1
    return loads


CALIBRATION_TERMS = ("paper", "engine")


def calibrate(rows, num_layers: int, expert_bytes: int, terms: str = "engine"):
    """A CostModel fitted to every measured iteration of ``rows``, and the fit's R^2.

    ``terms="paper"``: duration = overhead + token_s * tokens + expert_s * experts + load_s * loads (the paper's
    model, one kind of token). ``terms="engine"`` adds what the engine's iterations are made of
    (``serve.sim.cost_model`` step 1): decode and prefill tokens apart, one program call per prefill item and
    one for the decodes, and one router call per admitted prompt."""
    from serve.sim.cost_model import CostModel

    if terms not in CALIBRATION_TERMS:
        raise ServeError(f"calibration terms {terms!r}: expected one of {', '.join(CALIBRATION_TERMS)}")
    X, y = [], []
    for row in rows:
        rec = row["record"]
        for tokens, experts, loads, duration, prefill, prefill_tokens, admitted in zip(
                rec.batch_tokens, rec.batch_experts, row["loads_per_iteration"], rec.batch_duration_s,
                rec.batch_prefill, rec.batch_prefill_tokens, rec.batch_admitted):
            if terms == "paper":
                X.append((1.0, tokens, experts, loads))
            else:
                decode = tokens - prefill_tokens
                X.append((1.0, decode, prefill_tokens, prefill + (decode > 0), experts, admitted, loads))
            y.append(duration)
    X, y = np.asarray(X, dtype=float), np.asarray(y)
    coef = _nonnegative_lstsq(X, y)
    residual = y - X @ coef
    r2 = 1.0 - float(residual @ residual) / max(float(((y - y.mean()) ** 2).sum()), 1e-30)
    load_s = max(coef[-1], 1e-9)
    slice_bytes = max(1, expert_bytes // num_layers)
    shared = dict(num_layers=num_layers, step_overhead_s=float(coef[0]), token_s=float(coef[1]),
                  slice_bytes=slice_bytes, link_bytes_per_s=slice_bytes * num_layers / load_s)
    if terms == "paper":
        return CostModel(expert_s=float(coef[2]), **shared), r2
    return CostModel(expert_s=float(coef[4]), prefill_token_s=float(coef[2]), call_s=float(coef[3]),
                     admit_s=float(coef[5]), **shared), r2


def _nonnegative_lstsq(X, y):
    """Least squares with coefficients >= 0 (active-set: drop the most negative one and refit)."""
    active = list(range(X.shape[1]))
    while True:
        coef = np.zeros(X.shape[1])
        coef[active] = np.linalg.lstsq(X[:, active], y, rcond=None)[0]
        worst = min(active, key=lambda j: coef[j])
        if coef[worst] >= 0 or len(active) == 1:
            return np.maximum(coef, 0.0)
        active.remove(worst)


def simulated(engine, row, concurrency, cost) -> dict:
    """The simulator on the run's own tokens and experts, with ``cost``: its summary."""
    from serve.engine.replay import simulate_like

    specs = [r.spec for r in row["record"].requests]
    engine.reset(**batching_settings(row["batching"]), cache_policy=row["cache"], prefetch=row["prefetch"])
    sim, _, _ = simulate_like(engine, specs, concurrency, cost)
    return summarize(sim)


def table(rows) -> str:
    head = ("C", "batching", "cache", "hit%", "loads", "MB moved", "experts/batch", "tok/batch", "norm p50 ms",
            "norm p95 ms", "TTFT p95 s", "tok/s", "stall s", "host ms/it", "compiles")
    lines = [" | ".join(head), " | ".join("-" * len(h) for h in head)]
    for row in rows:
        s, st = row["summary"], row["stats"]
        lines.append(" | ".join(str(v) for v in (
            row["slots"], row["batching"], row["cache"], f"{100 * st['hit_ratio']:.1f}", st["loads"],
            f"{st['bytes_moved'] / 1e6:.0f}", f"{s['unique_experts_per_batch']:.2f}", f"{s['tokens_per_batch']:.1f}",
            f"{1e3 * s['normalized_latency_s']['p50']:.1f}", f"{1e3 * s['normalized_latency_s']['p95']:.1f}",
            f"{s['ttft_s']['p95']:.2f}", f"{s['throughput_tokens_per_s']:.1f}", f"{row['stall_s']:.2f}",
            f"{row['host_ms_per_iteration']:.2f}", row["compiles_in_run"])))
        real = s["normalized_latency_s"]["mean"]
        for terms, sim in row.get("simulated", {}).items():
            sim = sim["normalized_latency_s"]["mean"]
            lines[-1] += f" | sim ({terms}) {1e3 * sim:.1f} ms vs {1e3 * real:.1f} ms ({100 * (sim - real) / real:+.0f}%)"
    return "\n".join(lines)


def describe_cost(cal: dict) -> str:
    """One line of a calibration's constants (``run_bench_engine``'s JSON entry)."""
    parts = [f"overhead {1e3 * cal['step_overhead_s']:.2f} ms", f"decode token {1e3 * cal['token_s']:.2f} ms"]
    if cal.get("prefill_token_s") is not None:
        parts += [f"prefill token {1e3 * cal['prefill_token_s']:.2f} ms", f"call {1e3 * cal['call_s']:.2f} ms",
                  f"admitted prompt {1e3 * cal['admit_s']:.2f} ms"]
    parts += [f"expert {1e3 * cal['expert_s']:.2f} ms", f"link {cal['link_bytes_per_s'] / 1e9:.2f} GB/s",
              f"R^2 {cal['r2']:.2f}"]
    return ", ".join(parts)


def plot(rows, path):
    """Normalized latency (p50/p95) and hit ratio per run, side by side."""
    from pathlib import Path

    from matplotlib.figure import Figure

    from readme_jax import atomic

    labels = [f"C={r['slots']}\n{r['batching']}\n{r['cache']}" for r in rows]
    fig = Figure(figsize=(max(6, 1.6 * len(rows)), 4.5))
    ax1, ax2 = fig.subplots(1, 2)
    x = np.arange(len(rows))
    for offset, q in ((-0.2, "p50"), (0.2, "p95")):
        ax1.bar(x + offset, [1e3 * r["summary"]["normalized_latency_s"][q] for r in rows], 0.4, label=q)
    ax1.set_ylabel("normalized latency (ms / token)")
    ax1.legend()
    ax2.bar(x, [100 * r["stats"]["hit_ratio"] for r in rows])
    ax2.set_ylabel("expert cache hit ratio (%)")
    for ax in (ax1, ax2):
        ax.set_xticks(x, labels, fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    path.chmod(0o644)  # the temporary file was private
    return path


def jsonable(rows) -> list[dict]:
    out = []
    for row in rows:
        clean = {k: v for k, v in row.items() if k not in ("record", "loads_per_iteration")}
        out.append(_finite(clean))
    return out


def _finite(value):
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def overhead(lm, engine, prompt_ids, new_tokens: int = 64, repeats: int = 3) -> dict:
    """Decode tokens/s of one request alone: ``lm.generate`` (an on-device loop) against the engine (one host
    round trip, scheduler and cache step per token) with every expert resident; best of ``repeats`` after a
    warm-up of each. ``engine`` must hold every expert (slots = E)."""

    from readme_jax.generate import SamplingParams

    if engine.slots != engine.num_experts:
        raise ServeError("the overhead check needs every expert resident (slots = E)")
    params = SamplingParams(max_new_tokens=new_tokens)
    best_lm = best_engine = math.inf
    lm_tokens = engine_tokens = 0
    for rep in range(repeats + 1):
        timings = {}
        lm.generate_ids([prompt_ids], params, timings=timings)
        engine.reset()
        engine.generate_ids([prompt_ids], params)
        rec = engine.record
        decode_s = sum(rec.batch_duration_s[1:])  # the first iteration is the prefill
        if rep:  # rep 0 warms both up (compiles, first loads)
            best_lm = min(best_lm, timings["decode_s"] / max(timings["new_tokens"] - 1, 1))
            best_engine = min(best_engine, decode_s / max(len(rec.batch_duration_s) - 1, 1))
            lm_tokens, engine_tokens = timings["new_tokens"], len(rec.batch_duration_s)
    return {"lm_generate_tokens_per_s": 1 / best_lm, "engine_tokens_per_s": 1 / best_engine,
            "ratio": best_lm / best_engine, "new_tokens": new_tokens, "lm_tokens": lm_tokens,
            "engine_tokens": engine_tokens, "prompt_tokens": len(prompt_ids)}
