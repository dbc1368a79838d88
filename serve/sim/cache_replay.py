"""Offline replay of a recorded expert-access stream through a cache policy (the Table 4 measurement).

A simulation run records, per iteration, the distinct experts its batch touched and, for each, the iteration at
which the first of its tokens was pre-gated (``known_at``). Replaying that one stream through every policy and
capacity compares them on identical accesses.

1. Expand the stream into keys: per iteration, its experts ascending; for slice units layer by layer
   (key = layer * num_experts + expert).
2. For Belady, build the future it may see (``SequenceLookahead``):
   - ``full``: the whole recorded future (Belady is then the offline optimum);
   - ``pregated``: only accesses whose tokens were already pre-gated at the current iteration, in their
     recorded order (the future a pre-gating server knows; unknown next use = never);
   - optionally cut at ``window_steps`` iterations ahead.
3. Feed each group of keys (an iteration, or one layer of it for slices) to ``ExpertCache.access_batch`` and
   return the cache's counters.
"""

import collections
import dataclasses
import heapq
import math

from serve.core.cache_policies import LOOKAHEAD_POLICIES, NO_LOOKAHEAD, make_policy
from serve.core.expert_cache import CacheCounters, ExpertCache
from serve.core.types import ServeError

LOOKAHEADS = ("full", "pregated")


@dataclasses.dataclass(frozen=True, slots=True)
class AccessStream:
    """Per-iteration expert accesses recorded by the simulator.

    Attributes:
      num_experts: E.
      experts: per iteration, the distinct experts touched (ascending).
      known_at: per iteration, for each of those experts, the iteration at which it was first pre-gated.
    """

    num_experts: int
    experts: tuple[tuple[int, ...], ...]
    known_at: tuple[tuple[int, ...], ...]

    def __post_init__(self):
        if len(self.experts) != len(self.known_at):
            raise ServeError(f"{len(self.experts)} iterations of experts but {len(self.known_at)} of known_at")
        for step, (experts, known) in enumerate(zip(self.experts, self.known_at)):
            if len(experts) != len(known):
                raise ServeError(f"iteration {step}: {len(experts)} experts but {len(known)} known_at values")
            if any(k > step for k in known):
                raise ServeError(f"iteration {step}: known_at {max(known)} lies in the future")

    def expand(self, unit: str, num_layers: int) -> tuple[list[int], list[int], list[int], list[int]]:
        """Step 1: flat lists (keys, iteration of each access, known_at of each access, group end offsets).

        A group is what is accessed together: an iteration for whole experts, one layer of it for slices.
        """
        keys, steps, known, group_ends = [], [], [], []
        num_experts = self.num_experts
        layers = range(num_layers) if unit == "slice" else (0,)
        for step, (experts, known_at) in enumerate(zip(self.experts, self.known_at)):
            for layer in layers:
                keys.extend(layer * num_experts + e for e in experts)
                steps.extend([step] * len(experts))
                known.extend(known_at)
                group_ends.append(len(keys))
        return keys, steps, known, group_ends


class SequenceLookahead:
    """Next uses read from a known access sequence, as seen from the group being accessed.

    The replay loop calls ``move_to(index)`` with the last access of that group; ``next_use(key)`` is then the
    first later access of ``key`` that is visible. Every access is visible when ``known_at`` is None; otherwise
    access j becomes visible once the current iteration reaches ``known_at[j]``. Visible future positions sit in
    one min-heap per key, so each access is pushed and popped once over a whole replay.
    """

    def __init__(self, keys, steps=None, known_at=None, window_steps=None):
        if (known_at is not None or window_steps is not None) and steps is None:
            raise ServeError("a pre-gated or windowed lookahead needs the iteration of every access")
        self._keys = keys
        self._steps = steps
        self._window = window_steps
        self._position = -1
        self._visible = {}
        self._release = None
        if known_at is None:
            for index, key in enumerate(keys):  # ascending positions: each list is already a valid heap
                self._visible.setdefault(key, []).append(index)
        else:
            self._release = collections.defaultdict(list)
            for index, known in enumerate(known_at):
                self._release[known].append(index)
            self._released = -1  # iterations whose accesses have been made visible

    def move_to(self, index: int) -> None:
        """Look from access ``index`` (the last of the group being accessed)."""
        self._position = index
        if self._release is None:
            return
        now = self._steps[index]
        for step in range(self._released + 1, now + 1):
            for future in self._release.pop(step, ()):
                heapq.heappush(self._visible.setdefault(self._keys[future], []), future)
        self._released = max(self._released, now)

    def next_use(self, key: int) -> float:
        heap = self._visible.get(key)
        if not heap:
            return math.inf
        while heap and heap[0] <= self._position:
            heapq.heappop(heap)
        if not heap:
            return math.inf
        index = heap[0]
        if self._window is not None and self._steps[index] > self._steps[self._position] + self._window:
            return math.inf
        return index


def replay(
    stream: AccessStream,
    capacity: int,
    policy: str,
    *,
    unit: str = "expert",
    num_layers: int = 1,
    lookahead: str = "full",
    window_steps: int | None = None,
    key_bytes: int = 0,
    seed: int = 0,
) -> CacheCounters:
    """Replay ``stream`` through one cache, one iteration's keys at a time (steps 1-3 of the module docstring)."""
    if lookahead not in LOOKAHEADS:
        raise ServeError(f"unknown lookahead {lookahead!r}; choose one of {', '.join(LOOKAHEADS)}")
    if window_steps is not None and window_steps < 0:
        raise ServeError(f"window_steps={window_steps!r} must be None or >= 0")
    keys, steps, known, group_ends = stream.expand(unit, num_layers)
    cache = ExpertCache(capacity, make_policy(policy, seed), key_bytes)
    view = NO_LOOKAHEAD
    if policy in LOOKAHEAD_POLICIES:  # belady-expected has no forecast here: it replays as Belady
        view = SequenceLookahead(
            keys,
            steps if (window_steps is not None or lookahead == "pregated") else None,
            known if lookahead == "pregated" else None,
            window_steps,
        )
    start = 0
    for end in group_ends:
        if end == start:
            continue
        if view is not NO_LOOKAHEAD:
            view.move_to(end - 1)  # next uses are counted after the whole group
        cache.access_batch(keys[start:end], view)
        start = end
    return cache.counters


def replay_batches(batches, capacity: int, policy: str, seed: int = 0) -> CacheCounters:
    """Replay a list of key sets (one per batch) with the full future known (used by the optimality tests)."""
    keys, steps = [], []
    for step, batch in enumerate(batches):
        keys.extend(batch)
        steps.extend([step] * len(batch))
    stream_view = SequenceLookahead(keys) if policy in LOOKAHEAD_POLICIES else NO_LOOKAHEAD
    cache = ExpertCache(capacity, make_policy(policy, seed))
    start = 0
    for batch in batches:
        if stream_view is not NO_LOOKAHEAD:
            stream_view.move_to(start + len(batch) - 1)
        cache.access_batch(list(batch), stream_view)
        start += len(batch)
    return cache.counters
