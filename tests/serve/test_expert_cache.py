"""Expert cache: Belady is the optimum (brute force) and beats every policy; counters add up; configs validate."""

import functools
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve.core.cache_policies import POLICY_NAMES, make_policy
from serve.sim.cache_replay import AccessStream, SequenceLookahead, replay, replay_batches
from serve.core.expert_cache import CacheConfig, ExpertCache
from serve.core.types import ServeError


def brute_force_hits(batches, capacity: int) -> int:
    """Most hits any sequence of cache contents can reach.

    A batch hits exactly its keys resident when it starts; afterwards the cache may hold any
    min(capacity, |resident | batch|) keys of ``resident | batch`` (everything else would need a load that
    no batch asked for). Every choice is explored.
    """

    @functools.cache
    def best(index: int, resident: frozenset) -> int:
        if index == len(batches):
            return 0
        batch = frozenset(batches[index])
        hits = len(batch & resident)
        pool = sorted(resident | batch)
        keep = min(capacity, len(pool))
        return hits + max(best(index + 1, frozenset(c)) for c in itertools.combinations(pool, keep))

    return best(0, frozenset())


@st.composite
def batch_sequences(draw, max_accesses=10):
    num_keys = draw(st.integers(1, 4))
    batches, total = [], 0
    while total < max_accesses and draw(st.booleans()) or not batches:
        size = draw(st.integers(1, min(3, num_keys)))
        batch = sorted(set(draw(st.lists(st.integers(0, num_keys - 1), min_size=size, max_size=size))))
        batches.append(batch)
        total += len(batch)
    return batches


@settings(max_examples=150, deadline=None)
@given(batch_sequences(), st.integers(1, 3))
def test_belady_equals_brute_force_optimum(batches, capacity):
    assert replay_batches(batches, capacity, "belady").hits == brute_force_hits(batches, capacity)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=10), st.integers(1, 3))
def test_belady_is_optimal_on_plain_sequences(keys, capacity):
    batches = [[key] for key in keys]
    assert replay_batches(batches, capacity, "belady").hits == brute_force_hits(batches, capacity)


@settings(max_examples=60, deadline=None)
@given(batch_sequences(max_accesses=40), st.integers(1, 4), st.integers(0, 3))
def test_belady_hits_at_least_every_other_policy(batches, capacity, seed):
    belady = replay_batches(batches, capacity, "belady").hits
    for policy in POLICY_NAMES:
        assert replay_batches(batches, capacity, policy, seed).hits <= belady, policy


def _check_counters(cache: ExpertCache) -> None:
    c = cache.counters
    assert c.hits + c.misses == c.accesses
    assert c.loads == c.misses + c.prefetches
    assert c.bytes_moved == c.loads * cache.key_bytes
    assert c.loads - c.evictions == len(cache.resident) <= cache.capacity
    assert c.prefetch_used + c.prefetch_wasted + cache.prefetch_pending == c.prefetches
    assert c.bypasses <= c.evictions


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(POLICY_NAMES),
    st.integers(1, 4),
    st.lists(st.tuples(st.booleans(), st.lists(st.integers(0, 5), min_size=1, max_size=3)), max_size=25),
)
def test_counters_add_up(policy, capacity, operations):
    class Store:
        def __init__(self):
            self.on_device = set()

        def load(self, key):
            assert key not in self.on_device
            self.on_device.add(key)

        def evict(self, key):
            self.on_device.remove(key)

    store = Store()
    cache = ExpertCache(capacity, make_policy(policy, seed=1), key_bytes=3, store=store)
    for is_prefetch, keys in operations:
        if is_prefetch:
            cache.prefetch(keys[0], protect=frozenset(keys[1:]))
        else:
            cache.access_batch(sorted(set(keys)))
        _check_counters(cache)
        assert store.on_device == cache.resident


def test_lru_fifo_lfu_choose_the_textbook_victims():
    def resident_after(policy, keys, capacity=2):
        cache = ExpertCache(capacity, make_policy(policy))
        for key in keys:
            cache.access(key)
        return cache.resident

    # 0 is reused before 2 arrives: LRU keeps it, FIFO (load order) drops it.
    assert resident_after("lru", [0, 1, 0, 2]) == {0, 2}
    assert resident_after("fifo", [0, 1, 0, 2]) == {1, 2}
    # LFU counts survive eviction: 1 (used three times) returns and stays over 0.
    assert resident_after("lfu", [1, 1, 1, 0, 2, 1, 3]) == {1, 3}


def test_a_batch_uses_its_resident_keys_first():
    cache = ExpertCache(2, make_policy("lru"))
    cache.access_batch([1, 2])
    # 0 and 3 miss; the resident 1 and 2 are hit first, so no miss of this batch can evict them before use.
    assert cache.access_batch([0, 1, 2, 3]) == [False, True, True, False]
    assert cache.counters.hits == 2


def test_belady_may_stream_a_key_it_will_not_need():
    class Future:
        def next_use(self, key):
            return {0: 1, 1: 2}.get(key, float("inf"))

    cache = ExpertCache(2, make_policy("belady"))
    cache.access_batch([0, 1])
    cache.access(5, Future())  # 5 is never used again: it is streamed, not cached
    assert cache.resident == {0, 1} and cache.counters.bypasses == 1


def test_random_policy_is_seeded():
    keys = [k % 5 for k in range(0, 200, 3)]
    runs = [replay_batches([[k] for k in keys], 2, "random", seed=s).hits for s in (7, 7, 8)]
    assert runs[0] == runs[1]


def test_sequence_lookahead_windows():
    keys = [0, 1, 0, 2]
    steps = [0, 1, 2, 3]
    known = [0, 1, 2, 0]  # key 2 at step 3 was pre-gated at step 0; key 0 at step 2 only at step 2
    view = SequenceLookahead(keys, steps, known)
    view.move_to(0)
    assert view.next_use(2) == 3 and view.next_use(0) == float("inf") and view.next_use(7) == float("inf")
    view.move_to(2)  # at iteration 2 the access of key 0 at step 2 is visible, but it is now the past
    assert view.next_use(0) == float("inf") and view.next_use(2) == 3
    windowed = SequenceLookahead(keys, steps, None, window_steps=1)
    windowed.move_to(0)
    assert windowed.next_use(1) == 1 and windowed.next_use(0) == float("inf")


@settings(max_examples=30, deadline=None)
@given(batch_sequences(max_accesses=30), st.integers(1, 3), st.sampled_from(["expert", "slice"]))
def test_offline_belady_bounds_the_pregated_one(batches, capacity, unit):
    known = tuple(tuple(max(0, step - (e % 3)) for e in batch) for step, batch in enumerate(batches))
    stream = AccessStream(4, tuple(tuple(b) for b in batches), known)
    layers = 2
    offline = replay(stream, capacity, "belady", unit=unit, num_layers=layers, lookahead="full").hits
    pregated = replay(stream, capacity, "belady", unit=unit, num_layers=layers, lookahead="pregated").hits
    lru = replay(stream, capacity, "lru", unit=unit, num_layers=layers).hits
    assert pregated <= offline and lru <= offline


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"capacity": 0}, "capacity=0 must be between 1 and 6 experts"),
        ({"capacity": 7}, "capacity=7 must be between 1 and 6 experts"),
        ({"capacity": 13, "unit": "slice"}, "capacity=13 must be between 1 and 12 expert slices"),
        ({"capacity": 2, "policy": "mru"}, "unknown cache policy 'mru'"),
        ({"capacity": 2, "unit": "row"}, "unknown cache unit 'row'"),
        ({"capacity": 2, "lookahead_items": -1}, "lookahead_items=-1"),
    ],
)
def test_cache_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ServeError, match=message):
        CacheConfig(num_experts=6, num_layers=2, **kwargs)


def test_stream_rejects_future_knowledge():
    with pytest.raises(ServeError, match="known_at 1 lies in the future"):
        AccessStream(2, ((0,),), ((1,),))
