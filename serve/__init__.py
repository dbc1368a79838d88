"""Serving for readme-jax, one room per idea.

- ``serve.core`` (no jax): requests, pre-gated queues and batching policies (``scheduler``, ``batching``), the
  expert cache and its eviction policies (``expert_cache``, ``cache_policies``), Belady's view of pending work
  (``lookahead``), the prefetch planner and the metrics.
- ``serve.sim`` (no jax): the cost model, workloads and JSONL traces, the event simulator, cache replay, and the
  ``bench-cache`` / ``bench-sched`` benchmarks.
- ``serve.routing`` (jax): routing traces from a real Read-ME folder (``readme-jax trace``).

Read-ME's router runs before the backbone, so every queued token's expert is known ahead of time: the scheduler
forms batches that touch few experts and the cache evicts by Belady's farthest-next-use rule over the pre-gated
future. This package's top level re-exports the jax-free names; docs/serving.md describes the design.
"""

from serve.core.cache_policies import POLICY_NAMES, BeladyPolicy, FIFOPolicy, LFUPolicy, LRUPolicy, RandomPolicy, make_policy
from serve.sim.cache_replay import AccessStream, SequenceLookahead, replay, replay_batches
from serve.sim.cost_model import CostModel, llama2_7b_a100
from serve.core.expert_cache import CacheConfig, CacheCounters, ExpertCache
from serve.core.metrics import summarize
from serve.core.scheduler import POLICIES, Scheduler, SchedulerConfig
from serve.sim.simulate import SimConfig, SimResult, simulate
from serve.sim.trace import Trace, TraceHeader, read_trace, write_trace
from serve.core.types import Batch, Request, RequestSpec, RequestState, ServeError
from serve.sim.workload import WorkloadConfig, synthetic_workload

__all__ = [
    "POLICIES",
    "POLICY_NAMES",
    "AccessStream",
    "Batch",
    "BeladyPolicy",
    "CacheConfig",
    "CacheCounters",
    "CostModel",
    "ExpertCache",
    "FIFOPolicy",
    "LFUPolicy",
    "LRUPolicy",
    "RandomPolicy",
    "Request",
    "RequestSpec",
    "RequestState",
    "Scheduler",
    "SchedulerConfig",
    "SequenceLookahead",
    "ServeError",
    "SimConfig",
    "SimResult",
    "Trace",
    "TraceHeader",
    "WorkloadConfig",
    "llama2_7b_a100",
    "make_policy",
    "read_trace",
    "replay",
    "replay_batches",
    "simulate",
    "summarize",
    "synthetic_workload",
    "write_trace",
]
