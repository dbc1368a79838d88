"""Group metadata: offsets, permutation and the (tile, group) pair maps against a brute-force enumeration."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings, strategies as st

from kernels.gmm import group_metadata_from_sizes, make_group_metadata, sort_tokens, unsort_tokens
from kernels.gmm.metadata import effective_tile_m

# One compile per (T, tile_m, E); sizes are traced data, so hypothesis examples reuse the executable.
from_sizes = jax.jit(group_metadata_from_sizes, static_argnames=("num_tokens", "tile_m"))


def brute_force_pairs(sizes, tile_m):
    """Every (tile, group) with at least one row of the group in the tile, group-major."""
    ends = np.cumsum(sizes)
    starts = ends - sizes
    pairs = []
    for g, (s, e) in enumerate(zip(starts, ends)):
        for t in range(s // tile_m, (e - 1) // tile_m + 1) if e > s else ():
            pairs.append((t, g))
    return pairs


def check_metadata(meta, sizes):
    meta = jax.device_get(meta)
    sizes = np.asarray(sizes)
    T, E, tm = int(sizes.sum()), len(sizes), meta.tile_m
    M = -(-T // tm)
    np.testing.assert_array_equal(meta.group_sizes_E, sizes)
    np.testing.assert_array_equal(meta.group_ends_E, np.cumsum(sizes))
    np.testing.assert_array_equal(meta.group_starts_E, np.cumsum(sizes) - sizes)
    pairs = brute_force_pairs(sizes, tm)
    n = int(meta.num_pairs)
    assert n == len(pairs) <= M + E - 1
    assert meta.pair_tile_J.shape == (M + E - 1,) and meta.num_tiles == M
    got = list(zip(np.asarray(meta.pair_tile_J[:n]).tolist(), np.asarray(meta.pair_group_J[:n]).tolist()))
    assert got == pairs
    # Slots past num_pairs repeat the last pair (safe for static-length consumers).
    assert set(np.asarray(meta.pair_tile_J[n:]).tolist()) <= {pairs[-1][0]}
    assert set(np.asarray(meta.pair_group_J[n:]).tolist()) <= {pairs[-1][1]}
    # Each tile's pairs are the contiguous range [start, end), and cover exactly that tile.
    for m in range(M):
        lo, hi = int(meta.tile_pair_start_M[m]), int(meta.tile_pair_end_M[m])
        assert [p for p in pairs[lo:hi]] == [p for p in pairs if p[0] == m]


def test_hand_example():
    sizes = [10, 4, 0, 14, 9]  # group 2 empty; boundaries inside tiles 1 and 3
    meta = from_sizes(jnp.array(sizes), num_tokens=37, tile_m=8)
    assert meta.tile_m == 8 and meta.num_tiles == 5
    assert int(meta.num_pairs) == 8
    np.testing.assert_array_equal(meta.pair_tile_J, [0, 1, 1, 1, 2, 3, 3, 4, 4])
    np.testing.assert_array_equal(meta.pair_group_J, [0, 0, 1, 3, 3, 3, 4, 4, 4])
    np.testing.assert_array_equal(meta.tile_pair_start_M, [0, 1, 4, 5, 7])
    np.testing.assert_array_equal(meta.tile_pair_end_M, [1, 4, 5, 7, 8])
    check_metadata(meta, sizes)


def _compose(weights, total):
    """Integer sizes proportional to ``weights`` (zeros stay zero) that sum to ``total``."""
    w = np.asarray(weights, np.float64)
    if w.sum() == 0:
        w[-1] = 1.0
    raw = w / w.sum() * total
    sizes = np.floor(raw).astype(np.int32)
    sizes[np.argsort(raw - sizes)[::-1][: total - sizes.sum()]] += 1
    return sizes


@settings(max_examples=30, deadline=None)
@given(
    num_experts=st.sampled_from([1, 7]),
    tile_m=st.sampled_from([3, 8]),
    data=st.data(),
)
def test_pairs_match_brute_force(num_experts, tile_m, data):
    # Zeros are likely (weight 0), and a weight of 1000 makes one giant group.
    weights = data.draw(st.lists(st.sampled_from([0, 0, 1, 2, 5, 1000]), min_size=num_experts,
                                 max_size=num_experts))
    sizes = _compose(weights, 48)
    check_metadata(from_sizes(jnp.asarray(sizes), num_tokens=48, tile_m=tile_m), sizes)


def test_sort_is_stable_and_unsort_inverts():
    ids = np.array([2, 0, 2, 1, 0, 2, 2, 1, 0])
    meta = jax.jit(lambda i: make_group_metadata(i, 4, tile_m=4))(ids)
    np.testing.assert_array_equal(meta.sort_idx_T, np.argsort(ids, kind="stable"))
    np.testing.assert_array_equal(meta.group_sizes_E, [3, 2, 4, 0])
    x = jnp.arange(9.0)[:, None] * jnp.ones((1, 3))
    xs = jax.jit(sort_tokens)(x, meta)
    np.testing.assert_array_equal(np.asarray(ids)[np.asarray(xs[:, 0], int)], np.sort(ids))
    np.testing.assert_array_equal(jax.jit(unsort_tokens)(xs, meta), x)
    np.testing.assert_array_equal(meta.unsort_idx_T[meta.sort_idx_T], np.arange(9))


def test_sort_unsort_gradients_are_permutations():
    ids = np.array([1, 0, 1, 2, 0])
    meta = jax.jit(lambda i: make_group_metadata(i, 3))(ids)
    x = jnp.arange(10.0).reshape(5, 2)
    c = jnp.array([[1.0, -2.0], [3.0, 4.0], [5.0, 0.5], [-1.0, 2.0], [7.0, 1.0]])
    for fn in (sort_tokens, unsort_tokens):
        got = jax.jit(jax.grad(lambda x: jnp.sum(fn(x, meta) * c)))(x)
        idx = np.asarray(fn(jnp.arange(5), meta))
        want = jax.jit(jax.grad(lambda x: jnp.sum(jnp.take(x, idx, axis=0) * c)))(x)
        np.testing.assert_array_equal(got, want)


def test_jit_with_traced_ids():
    ids = np.array([3, 3, 0, 1, 3, 1, 0, 3, 3, 3, 1])
    meta = jax.jit(lambda i: make_group_metadata(i, 5, tile_m=4))(jnp.asarray(ids))
    assert meta.tile_m == 4
    np.testing.assert_array_equal(meta.sort_idx_T, np.argsort(ids, kind="stable"))
    check_metadata(meta, np.bincount(ids, minlength=5))


@pytest.mark.parametrize("tile_m,T,want", [(128, 1, 16), (128, 20, 32), (128, 5000, 128), (8, 1, 8), (64, 64, 64)])
def test_tile_m_is_capped_for_small_token_counts(tile_m, T, want):
    assert effective_tile_m(tile_m, T) == want
