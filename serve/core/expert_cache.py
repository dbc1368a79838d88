"""Expert cache: which experts (or per-layer expert slices) are resident on the device, with counters.

The cache tracks keys and counts; it never touches weights. Whatever moves weights (the engine's device buffers)
plugs in as an ``ExpertStore`` and is told about every load and eviction, in order.

Units (``CacheConfig.unit``):
- ``expert``: a key is an expert id; a resident expert has all N layers on the device; capacity in experts.
- ``slice``: a key is ``layer * num_experts + expert``, one layer's slice of one expert; capacity in slices.

Access model. One batch (or, for slices, one layer of a batch) needs a set of keys at once:

1. ``access_batch(keys)`` accesses the resident keys first (hits: they cost nothing, so the engine uses them
   first) and then the missing ones, in the given order.
2. ``access(key)``: if resident it is a hit. Otherwise it is a miss and the key is loaded; if that overfills the
   cache, the policy drops one key among all resident keys, the new one included. Dropping the new key means
   it was streamed through a staging buffer and not kept (a bypass). A key already used by the running batch
   may be dropped: for slices its layer has been computed; for whole experts this abstracts the layer
   pipeline. On this model Belady's farthest-next-use rule is the offline optimum (tests/serve checks it
   against brute force), and the hits of a batch (or layer) are exactly its keys resident when it starts.
3. ``prefetch(key)``: load a key before it is needed. It never evicts a key that ``protect`` names, nor one the
   lookahead needs no later than the prefetched key. A prefetched key counts as used at its first access (a
   hit) and as wasted if evicted before that.
4. Counter identities (checked by the tests): hits + misses = accesses; loads = misses + prefetches;
   bytes_moved = loads * key_bytes; loads - evictions = number of resident keys (a bypass counts as a load and
   an eviction); prefetch_used + prefetch_wasted + prefetch_pending = prefetches.
"""

import dataclasses
from typing import Protocol

from serve.core.cache_policies import NO_LOOKAHEAD, POLICY_NAMES, EvictionPolicy, Lookahead, make_policy
from serve.core.types import ServeError

UNITS = ("expert", "slice")


@dataclasses.dataclass(frozen=True, slots=True)
class CacheConfig:
    """Expert-cache settings.

    Attributes:
      num_experts: E, routed experts per layer.
      num_layers: N, decoder layers (sets the slice key space and a whole expert's size).
      capacity: how many keys fit: 1..E for ``expert`` units, 1..N*E for ``slice`` units.
      unit: ``expert`` or ``slice``.
      policy: one of ``cache_policies.POLICY_NAMES``.
      seed: seed of the ``random`` policy.
      lookahead_items: how many pending work items the simulator's lookahead scans (None: all of them; the
        default bounds the cost of an iteration when the queues are long).
    """

    num_experts: int
    num_layers: int
    capacity: int
    unit: str = "expert"
    policy: str = "belady"
    seed: int = 0
    lookahead_items: int | None = 1024

    def __post_init__(self):
        for name in ("num_experts", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ServeError(f"{name}={value!r} must be a positive integer")
        if self.unit not in UNITS:
            raise ServeError(f"unknown cache unit {self.unit!r}; choose one of {', '.join(UNITS)}")
        if self.policy not in POLICY_NAMES:
            raise ServeError(f"unknown cache policy {self.policy!r}; choose one of {', '.join(POLICY_NAMES)}")
        limit = self.num_keys
        if not isinstance(self.capacity, int) or not 1 <= self.capacity <= limit:
            what = "experts" if self.unit == "expert" else "expert slices (num_layers * num_experts)"
            raise ServeError(f"cache capacity={self.capacity!r} must be between 1 and {limit} {what}")
        if self.lookahead_items is not None and (
            not isinstance(self.lookahead_items, int) or self.lookahead_items < 0
        ):
            raise ServeError(f"lookahead_items={self.lookahead_items!r} must be None or an integer >= 0")

    @property
    def num_keys(self) -> int:
        """Size of the key space."""
        return self.num_experts if self.unit == "expert" else self.num_layers * self.num_experts


class ExpertStore(Protocol):
    """The storage side (device buffers), told about every cache decision."""

    def load(self, key: int) -> None: ...

    def evict(self, key: int) -> None: ...


@dataclasses.dataclass(slots=True)
class CacheCounters:
    accesses: int = 0
    hits: int = 0
    misses: int = 0
    loads: int = 0
    evictions: int = 0
    bypasses: int = 0
    bytes_moved: int = 0
    prefetches: int = 0
    prefetch_used: int = 0
    prefetch_wasted: int = 0

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.accesses if self.accesses else 0.0

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["hit_ratio"] = self.hit_ratio
        return out


class ExpertCache:
    """A capacity-bounded set of resident keys, driven by an eviction policy (see the module docstring)."""

    def __init__(self, capacity: int, policy: EvictionPolicy, key_bytes: int = 0, store: ExpertStore | None = None):
        if not isinstance(capacity, int) or capacity < 1:
            raise ServeError(f"cache capacity={capacity!r} must be a positive integer")
        if key_bytes < 0:
            raise ServeError(f"key_bytes={key_bytes!r} must be >= 0")
        self.capacity = capacity
        self.policy = policy
        self.key_bytes = key_bytes
        self.store = store
        self.resident = set()
        self.counters = CacheCounters()
        self.clock = 0
        self._unused_prefetch = set()

    @classmethod
    def from_config(cls, config: CacheConfig, slice_bytes: int = 0, store: ExpertStore | None = None):
        """A cache for ``config``; a key weighs one slice, or N slices for whole experts."""
        key_bytes = slice_bytes if config.unit == "slice" else slice_bytes * config.num_layers
        return cls(config.capacity, make_policy(config.policy, config.seed), key_bytes, store)

    @property
    def prefetch_pending(self) -> int:
        """Prefetched keys still resident and not yet accessed."""
        return len(self._unused_prefetch)

    def __contains__(self, key: int) -> bool:
        return key in self.resident

    def access(self, key: int, lookahead: Lookahead = NO_LOOKAHEAD, protect=frozenset()) -> bool:
        """Access ``key`` (loading it on a miss); returns True on a hit. ``protect``: keys the eviction may not
        drop (the real engine's running batch, which needs all its experts resident at once)."""
        counters = self.counters
        counters.accesses += 1
        self.clock += 1
        if key in self.resident:
            counters.hits += 1
            if key in self._unused_prefetch:
                self._unused_prefetch.discard(key)
                counters.prefetch_used += 1
            self.policy.on_access(key, self.clock)
            return True
        counters.misses += 1
        self._load(key)
        self.policy.on_access(key, self.clock)
        if len(self.resident) > self.capacity:
            candidates = self.resident if not protect else [k for k in self.resident if k not in protect]
            if not candidates:
                raise ServeError(f"cannot load key {key}: all {len(self.resident)} resident keys are protected")
            victim = self.policy.victim(candidates, lookahead)  # without protect: every resident key
            if victim == key:
                counters.bypasses += 1
            self._evict(victim)
        return False

    def access_batch(self, keys, lookahead: Lookahead = NO_LOOKAHEAD, protect=frozenset()) -> list[bool]:
        """Access one batch's keys, resident ones first (step 1); returns hit flags in the order of ``keys``."""
        resident = self.resident
        hits = [key in resident for key in keys]
        for key, hit in zip(keys, hits):
            if hit:
                self.access(key, lookahead, protect)
        for key, hit in zip(keys, hits):
            if not hit:
                self.access(key, lookahead, protect)
        return hits

    def prefetch(self, key: int, lookahead: Lookahead = NO_LOOKAHEAD, protect=frozenset()) -> bool:
        """Load ``key`` ahead of its use if that evicts nothing needed sooner; returns True if it was loaded."""
        if key in self.resident:
            return False
        if len(self.resident) >= self.capacity:
            candidates = [k for k in self.resident if k not in protect]
            if not candidates:
                return False
            victim = self.policy.victim(candidates, lookahead)
            if lookahead.next_use(victim) <= lookahead.next_use(key):
                return False
            self._evict(victim)
        self.clock += 1
        self.counters.prefetches += 1
        self._unused_prefetch.add(key)
        self._load(key)
        return True

    def _load(self, key: int) -> None:
        self.resident.add(key)
        self.counters.loads += 1
        self.counters.bytes_moved += self.key_bytes
        self.policy.on_insert(key, self.clock)
        if self.store is not None:
            self.store.load(key)

    def _evict(self, key: int) -> None:
        self.resident.remove(key)
        self.counters.evictions += 1
        if key in self._unused_prefetch:
            self._unused_prefetch.discard(key)
            self.counters.prefetch_wasted += 1
        self.policy.on_evict(key)
        if self.store is not None:
            self.store.evict(key)
