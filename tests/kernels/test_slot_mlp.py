"""slot_mlp == its oracle for any slot assignment (empty slots, one slot for all, decode and prefill sizes);
clear errors for bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.gmm import GmmInputError, make_slot_plan, slot_mlp, slot_mlp_reference
from kernels.gmm.slotted import chunk_sizes

D, X, C = 16, 8, 3
RNG = np.random.default_rng(0)
EXPERTS = tuple(tuple(jnp.asarray(RNG.standard_normal(s).astype(np.float32) * 0.3) for s in ((D, 2 * X), (X, D)))
                for _ in range(C))
run = jax.jit(slot_mlp)


def _check(slot_T):
    slot_T = jnp.asarray(slot_T, jnp.int32)
    x_TD = jnp.asarray(np.random.default_rng(int(slot_T.sum())).standard_normal((slot_T.shape[0], D)), jnp.float32)
    got = run(x_TD, make_slot_plan(slot_T, C), EXPERTS)
    np.testing.assert_allclose(np.asarray(got), np.asarray(slot_mlp_reference(x_TD, slot_T, EXPERTS)),
                               atol=1e-5, rtol=1e-5)


@settings(max_examples=12, deadline=None)
@given(st.sampled_from([1, 2, 8, 16, 40, 200]).flatmap(lambda t: st.lists(st.integers(0, C - 1), min_size=t, max_size=t)))
def test_equals_reference_for_any_assignment(slots):
    _check(slots)


@pytest.mark.parametrize("slot_T", [[1] * 8, [2] * 300, [0] * 129 + [2] * 127, [0, 2] * 70,
                                    [0] * 1100 + [1] * 5 + [2] * 1000])
def test_one_slot_for_all_and_chunk_boundaries(slot_T):
    _check(slot_T)


def test_chunk_sizes_by_shape():
    assert chunk_sizes(1) == (1, (1,))
    assert chunk_sizes(8) == (8, (1, 2, 4, 8))
    assert chunk_sizes(5) == (8, (1, 2, 4, 8))
    assert chunk_sizes(40) == (64, (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64))
    assert chunk_sizes(200) == (128, (32, 64, 128))
    assert chunk_sizes(1000) == (128, (64, 128))
    assert chunk_sizes(2048) == (128, (128,))  # one tail: compiles 3x faster at prefill sizes, as fast to run
    for t in (17, 40, 100):  # every remainder fits a tail of which at most a third is waste
        big, tails = chunk_sizes(t)
        for r in range(1, min(t, big) + 1):
            assert min(s for s in tails if s >= r) <= max(8, 1.5 * r)
    for t in (129, 300, 1000, 5000):  # above 128 rows: at most twice the remainder, or the smallest tail
        big, tails = chunk_sizes(t)
        assert big == 128 and max(tails) == 128
        for r in range(1, big + 1):
            assert min(s for s in tails if s >= r) <= max(tails[0], 2 * r)


def test_bad_inputs():
    plan = make_slot_plan(jnp.zeros(4, jnp.int32), C)
    x = jnp.zeros((4, D), jnp.float32)
    with pytest.raises(GmmInputError, match="2 slots of weights but the plan has 3"):
        slot_mlp(x, plan, EXPERTS[:2])
    with pytest.raises(GmmInputError, match="do not fit D=16"):
        slot_mlp(x, plan, EXPERTS[:2] + ((EXPERTS[0][0][:5], EXPERTS[0][1]),))
    with pytest.raises(GmmInputError, match="dtype"):
        slot_mlp(x.astype(jnp.bfloat16), plan, EXPERTS)
    with pytest.raises(GmmInputError, match=r"x_TD must be \[T=4, D\]"):
        slot_mlp(jnp.zeros((3, D)), plan, EXPERTS)
    with pytest.raises(GmmInputError, match="1-D"):
        make_slot_plan(jnp.zeros((2, 2), jnp.int32), C)
