"""Prometheus metrics of the server (names: ``shared/spec/engine.md`` §5.5, vLLM's under the ``readme:`` prefix).

Request timings come from ``time.monotonic()`` stamps taken in this one process: the arrival in the handler, the
token events in the engine thread. The expert cache's counters are the engine's own (``Engine.stats()``), read at
scrape time from the snapshot the engine thread publishes after each iteration, so a scrape never touches the
engine. Each app has its own registry, so several servers can live in one process (the tests).
"""

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   20.0, 40.0, 80.0, 160.0)
# Engine.stats() key -> (metric name, help, counter?)
CACHE_STATS = {
    "hits": ("readme:expert_cache_hits", "expert cache hits", True),
    "misses": ("readme:expert_cache_misses", "expert cache misses", True),
    "loads": ("readme:expert_loads", "experts loaded into a device slot", True),
    "evictions": ("readme:expert_evictions", "experts evicted from a device slot", True),
    "prefetches": ("readme:expert_prefetches", "experts loaded ahead of use", True),
    "prefetch_used": ("readme:expert_prefetch_used", "prefetched experts used before eviction", True),
    "prefetch_wasted": ("readme:expert_prefetch_wasted", "prefetched experts evicted unused", True),
    "bytes_moved": ("readme:expert_bytes_moved", "bytes of expert weights moved host to device", True),
    "stall_s": ("readme:expert_stall_seconds", "seconds the engine waited on expert transfers", True),
    "iterations": ("readme:engine_iterations", "engine iterations", True),
    "hit_ratio": ("readme:expert_cache_hit_ratio", "expert cache hits / accesses", False),
}


class ServerMetrics:
    def __init__(self, model_name: str, snapshot):
        """``snapshot()`` returns the engine thread's latest dict (``stats``, ``running``, ``waiting``)."""
        self.registry = CollectorRegistry()
        label = {"labelnames": ["model_name"], "registry": self.registry}
        self.model_name = model_name

        def hist(name, doc):
            return Histogram(name, doc, buckets=LATENCY_BUCKETS, **label).labels(model_name)

        self.ttft = hist("readme:time_to_first_token_seconds", "arrival to first generated token")
        self.itl = hist("readme:inter_token_latency_seconds", "time between consecutive tokens of a request")
        self.e2e = hist("readme:e2e_request_latency_seconds", "arrival to the last token")
        self.queue = hist("readme:request_queue_time_seconds", "arrival to acceptance by the engine loop")
        self.prompt_tokens = Counter("readme:prompt_tokens", "prompt tokens of accepted requests",
                                     **label).labels(model_name)
        self.generation_tokens = Counter("readme:generation_tokens", "generated tokens sent to clients",
                                         **label).labels(model_name)
        self.success = Counter("readme:request_success", "finished requests by reason",
                               labelnames=["model_name", "finished_reason"], registry=self.registry)
        self.rejected = Counter("readme:requests_rejected", "requests refused because the waiting queue was full",
                                **label).labels(model_name)
        self.errors = Counter("readme:request_errors", "requests answered with a 4xx error",
                              **label).labels(model_name)
        self.registry.register(_EngineCollector(model_name, snapshot))


class _EngineCollector:
    def __init__(self, model_name, snapshot):
        self.model_name, self.snapshot = model_name, snapshot

    def describe(self):
        return []  # collected lazily: the engine's keys are known only once it has run

    def collect(self):
        snap = self.snapshot()
        for key, doc in (("running", "requests the engine is generating for"),
                         ("waiting", "requests admitted but not yet running")):
            g = GaugeMetricFamily(f"readme:num_requests_{key}", doc, labels=["model_name"])
            g.add_metric([self.model_name], float(snap.get(key, 0)))
            yield g
        stats = snap.get("stats", {})
        for key, (name, doc, counter) in CACHE_STATS.items():
            if key not in stats or stats[key] is None:
                continue
            family = CounterMetricFamily if counter else GaugeMetricFamily
            m = family(name, doc, labels=["model_name"])
            m.add_metric([self.model_name], float(stats[key]))
            yield m
