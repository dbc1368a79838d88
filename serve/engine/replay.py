"""Workloads through the real engine, and the same workload through the simulator with the engine's settings.

``replay`` serves a list of ``RequestSpec``s with prompt ids: open loop (each request issued at its
``arrival_s``, wall clock from the start of the run) or closed loop (``concurrency`` clients, each issuing its
next request when the previous one finishes). With ``teacher_forced`` the recorded tokens and experts replace
the sampled and routed ones, so the engine executes exactly the trace that ``simulate_like`` replays:
``serve.sim.simulate`` with the engine's scheduler and cache settings, recording the same two things the
engine records (the requests of every batch, and the cache's load/evict decisions).
"""

import dataclasses
import time

from readme_jax.generate import SamplingParams
from serve.core.expert_cache import CacheConfig
from serve.core.types import ServeError
from serve.sim.cost_model import CostModel
from serve.sim.simulate import SimConfig, simulate


def replay(engine, specs, concurrency: int | None = None, teacher_forced: bool = False, think_s: float = 0.0,
           progress=None):
    """Serve ``specs`` to completion; returns the engine's ``EngineRecord`` (requests in workload order)."""
    if engine.has_work():
        raise ServeError("replay needs an idle engine (requests are still live)")
    for spec in specs:
        if spec.prompt_ids is None:
            raise ServeError(f"request {spec.request_id!r} has no prompt_ids; the engine needs real tokens")
    engine.reset_record()
    pending = list(range(len(specs)))  # workload positions not yet issued, in order
    due = []  # (issue time, position) for closed-loop clients thinking
    if concurrency is not None:
        due = [(0.0, i) for i in pending[:concurrency]]
        pending = pending[concurrency:]
    done = 0
    while done < len(specs):
        now = engine.now()
        if concurrency is None:
            while pending and specs[pending[0]].arrival_s <= now:
                position = pending.pop(0)
                _issue(engine, specs, position, specs[position].arrival_s, teacher_forced)
        else:
            for item in [d for d in due if d[0] <= now]:
                due.remove(item)
                _issue(engine, specs, item[1], item[0], teacher_forced)
        if not engine.has_work():
            wake = specs[pending[0]].arrival_s if concurrency is None and pending else min(
                (d[0] for d in due), default=now)
            time.sleep(max(0.0, wake - engine.now()))
            continue
        for event in engine.step():
            if event.finished:
                done += 1
                if progress is not None:
                    progress(done)
                if concurrency is not None and pending:
                    due.append((engine.now() + think_s, pending.pop(0)))
    record = engine.record
    record.requests.sort(key=lambda r: r.index)
    record.cache = engine.cache.counters if engine.cache is not None else None
    return record


def _issue(engine, specs, position: int, at: float, teacher_forced: bool) -> None:
    spec = specs[position]
    if teacher_forced:
        if spec.output_ids is None:
            raise ServeError(f"request {spec.request_id!r}: teacher forcing needs output_ids")
        forced = dataclasses.replace(spec, arrival_s=at, live=False)
        params = SamplingParams(max_new_tokens=spec.num_output_tokens)
    else:
        forced = None
        params = SamplingParams(max_new_tokens=spec.max_new_tokens)
    engine.submit(spec.prompt_ids, params, request_id=spec.request_id, arrival_s=at, forced=forced, index=position)


class _Recorder:
    """An ``ExpertStore`` that writes down the cache's decisions, as the engine's slot store does."""

    def __init__(self):
        self.iteration = 0
        self.decisions = []

    def load(self, key):
        self.decisions.append((self.iteration, "load", key))

    def evict(self, key):
        self.decisions.append((self.iteration, "evict", key))


def sim_config(engine, concurrency: int | None, cost: CostModel | None = None) -> SimConfig:
    """The simulator's config for the engine's settings (its scheduler, its cache, protect_batch)."""
    c = engine.config
    cost = cost or CostModel(num_layers=engine.cfg.n_layers, step_overhead_s=1e-3, token_s=1e-4, expert_s=1e-3,
                             slice_bytes=max(1, engine.store.expert_bytes // engine.cfg.n_layers) if engine.store
                             else 1, link_bytes_per_s=3e9)
    cache = None
    if engine.cache is not None:
        cache = CacheConfig(engine.num_experts, engine.cfg.n_layers, engine.slots, policy=c.cache_policy, seed=c.seed,
                            lookahead_items=c.lookahead_items)
    return SimConfig(scheduler=engine.scheduler.config, cost=cost, cache=cache,
                     prefetch=c.prefetch if cache is not None else "none", concurrency=concurrency,
                     protect_batch=cache is not None)


def simulate_like(engine, specs, concurrency: int | None, cost: CostModel | None = None):
    """(SimResult, requests of every batch, cache decisions) of the simulator on ``specs`` with the engine's
    settings; ``specs`` must be recorded (not live)."""
    recorder = _Recorder()
    batches = []

    def on_batch(batch):
        recorder.iteration = batch.iteration
        batches.append(tuple(r.spec.request_id for r in batch.requests))

    specs = [dataclasses.replace(s, live=False) for s in specs]
    config = sim_config(engine, concurrency, cost)
    result = simulate(specs, engine.num_experts, config, store=recorder if config.cache else None,
                      on_batch=on_batch)
    return result, batches, recorder.decisions
