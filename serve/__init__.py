"""Serving core of readme-jax: pre-gated scheduling, expert caching and a trace-driven simulator.

Pure Python over ints and floats; no module here imports jax (tests/serve/test_no_jax_import.py checks it).
Read-ME's router runs before the backbone, so every queued token's expert is known ahead of time. That lets
the scheduler form batches that touch few experts (``scheduler``), and lets the expert cache evict by Belady's
farthest-next-use rule over the pre-gated future (``expert_cache``, ``cache_policies``). ``simulate`` replays a
workload (``workload`` or a ``trace`` file) under a ``cost_model``; ``bench`` and ``cli`` provide the
``readme-jax bench-cache`` and ``bench-sched`` commands. docs/serving.md describes the design.
"""

from serve.cache_policies import POLICY_NAMES, BeladyPolicy, FIFOPolicy, LFUPolicy, LRUPolicy, RandomPolicy, make_policy
from serve.cache_replay import AccessStream, SequenceLookahead, replay, replay_batches
from serve.cost_model import CostModel, llama2_7b_a100
from serve.expert_cache import CacheConfig, CacheCounters, ExpertCache
from serve.metrics import summarize
from serve.scheduler import POLICIES, Scheduler, SchedulerConfig
from serve.simulate import SimConfig, SimResult, simulate
from serve.trace import Trace, TraceHeader, read_trace, write_trace
from serve.types import Batch, Request, RequestSpec, RequestState, ServeError
from serve.workload import WorkloadConfig, synthetic_workload

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
