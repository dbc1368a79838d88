"""Eviction policies for the expert cache: Belady, expected-next-use Belady, LRU, LFU, FIFO, Random.

A policy only answers "which resident key goes?"; the cache (``serve.core.expert_cache``) owns the resident set and
the counters, and storage (device buffers) sits below the cache. Keys are ints: an expert id, or
``layer * num_experts + expert`` for per-layer expert slices. ``clock`` is the cache's access counter.

Belady (farthest next use; on this access model it matches the brute-force optimum, see the tests):

1. The candidates are the resident keys, the one just loaded included (``serve.core.expert_cache``). Ask the
   lookahead for each one's next use after the current batch (or layer): a position in the future access
   order, or ``inf`` when the known future (the pre-gated work in the window) never uses it again.
2. Drop the candidate with the farthest next use; keys never used again go first.
3. Ties (most often several ``inf`` keys) go to the least recently used key, then the largest key, so the
   choice is deterministic. Any tie-break keeps the offline optimum; recency helps when the window is short.
"""

import collections
import math
import random
from typing import Protocol

from serve.core.types import ServeError

EXPECTED = "belady-expected"
POLICY_NAMES = ("belady", "lru", "lfu", "fifo", "random", EXPECTED)
LOOKAHEAD_POLICIES = ("belady", EXPECTED)  # the policies that read a lookahead


class Lookahead(Protocol):
    """The known future: ``next_use(key)`` is the position of the key's next access, or ``math.inf``."""

    def next_use(self, key: int) -> float: ...


class NoLookahead:
    """A future that is entirely unknown (every next use is ``inf``)."""

    def next_use(self, key: int) -> float:
        return math.inf


NO_LOOKAHEAD = NoLookahead()


class EvictionPolicy(Protocol):
    name: str

    def on_access(self, key: int, clock: int) -> None:
        """Called on every access of ``key`` (hits, and misses after the load)."""

    def on_insert(self, key: int, clock: int) -> None:
        """Called when ``key`` becomes resident (demand load or prefetch)."""

    def on_evict(self, key: int) -> None:
        """Called when ``key`` leaves the cache."""

    def victim(self, candidates, lookahead: Lookahead) -> int:
        """Choose the key to drop among ``candidates`` (the resident keys, the one just loaded included)."""


class LRUPolicy:
    """Evict the least recently accessed key."""

    name = "lru"

    def __init__(self):
        self._order = collections.OrderedDict()

    def on_access(self, key, clock):
        self._order[key] = None
        self._order.move_to_end(key)

    def on_insert(self, key, clock):
        self._order[key] = None
        self._order.move_to_end(key)

    def on_evict(self, key):
        del self._order[key]

    def victim(self, candidates, lookahead):
        return _first_in_order(self._order, candidates)


class FIFOPolicy:
    """Evict the key that was loaded longest ago, whatever its use since."""

    name = "fifo"

    def __init__(self):
        self._order = collections.OrderedDict()

    def on_access(self, key, clock):
        pass

    def on_insert(self, key, clock):
        self._order[key] = None

    def on_evict(self, key):
        del self._order[key]

    def victim(self, candidates, lookahead):
        return _first_in_order(self._order, candidates)


def _first_in_order(order: collections.OrderedDict, candidates) -> int:
    """The oldest key of ``order`` among ``candidates`` (O(1) when every resident key is a candidate)."""
    if len(candidates) == len(order):
        return next(iter(order))
    allowed = candidates if isinstance(candidates, (set, frozenset)) else set(candidates)
    return next(k for k in order if k in allowed)


class LFUPolicy:
    """Evict the least frequently accessed key; counts cover the whole history, ties go to the least recent."""

    name = "lfu"

    def __init__(self):
        self._count = collections.Counter()
        self._last = {}

    def on_access(self, key, clock):
        self._count[key] += 1
        self._last[key] = clock

    def on_insert(self, key, clock):
        self._last.setdefault(key, clock)

    def on_evict(self, key):
        pass  # frequencies survive eviction (perfect LFU), so popular experts win back their slot

    def victim(self, candidates, lookahead):
        return min(candidates, key=lambda k: (self._count[k], self._last[k], k))


class RandomPolicy:
    """Evict a uniformly random key, from a seeded generator."""

    name = "random"

    def __init__(self, seed: int = 0):
        self._rng = random.Random(seed)

    def on_access(self, key, clock):
        pass

    def on_insert(self, key, clock):
        pass

    def on_evict(self, key):
        pass

    def victim(self, candidates, lookahead):
        return self._rng.choice(sorted(candidates))  # sorted: set order must not leak into the draw


class BeladyPolicy:
    """Evict the key whose next use is farthest (see the module docstring)."""

    name = "belady"

    def __init__(self):
        self._last = {}

    def on_access(self, key, clock):
        self._last[key] = clock

    def on_insert(self, key, clock):
        self._last[key] = clock

    def on_evict(self, key):
        pass

    def victim(self, candidates, lookahead):
        last = self._last
        next_use = lookahead.next_use
        return max(candidates, key=lambda k: (next_use(k), -last[k], -k))


class ExpectedNextUsePolicy(BeladyPolicy):
    """Evict the key whose expected next use is farthest (``serve.core.next_use``).

    The lookahead's ``expected_next_use`` (``serve.core.lookahead.ExpectedLookahead``) blends the known pending
    work with forecast tokens of the live requests, in projected batches. The policy compares the batch a key is
    expected in (the whole part): within one batch the order matters, and the lookahead's ``next_use`` gives it
    (Belady's position in the service order, where each running request's likeliest next token is queued).
    Then as in Belady. A lookahead without forecasts (the replays' ``SequenceLookahead``) makes this policy
    Belady exactly. On the demo trace at 16 clients, comparing expected batches whole closes 53% / 49% of the
    LRU -> optimum gap at capacity 2 / 3, against 45% / 46% when the fractions decide (at 64 clients: the
    same, 56% / 59%; docs/serving.md).
    """

    name = EXPECTED

    def victim(self, candidates, lookahead):
        expected = getattr(lookahead, "expected_next_use", None)
        if expected is None:
            return super().victim(candidates, lookahead)
        last = self._last
        next_use = lookahead.next_use
        return max(candidates, key=lambda k: (_whole(expected(k)), next_use(k), -last[k], -k))


def _whole(time: float) -> float:
    """The projected batch of an expected time (its whole part); never used stays ``inf``."""
    return time if time == math.inf else math.floor(time)


def make_policy(name: str, seed: int = 0) -> EvictionPolicy:
    """A fresh policy by name (one of POLICY_NAMES); ``seed`` is used by ``random`` only."""
    if name == "belady":
        return BeladyPolicy()
    if name == EXPECTED:
        return ExpectedNextUsePolicy()
    if name == "lru":
        return LRUPolicy()
    if name == "lfu":
        return LFUPolicy()
    if name == "fifo":
        return FIFOPolicy()
    if name == "random":
        return RandomPolicy(seed)
    raise ServeError(f"unknown cache policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
