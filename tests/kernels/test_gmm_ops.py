"""One parity suite for every implementation: values and gradients against jax.lax.ragged_dot.

"pallas_interpret" runs the exact GPU kernel bodies on CPU; "pallas_gpu" (marked gpu) compiles them and
is skipped without a GPU. tile_m=16 and dims that are multiples of 16 keep the shapes valid on the H100.
"""

import functools

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings, strategies as st

from kernels.gmm import expert_mlp, gmm, group_metadata_from_sizes, tgmm
from kernels.gmm import reference

IMPLS = ["xla", "pallas_interpret", pytest.param("pallas_gpu", marks=pytest.mark.gpu)]
DTYPES = [jnp.float32, jnp.bfloat16]
T, D, X, TM = 40, 32, 48, 16
# Group 1 empty; boundaries fall inside tiles 0 and 1 (tile 1 holds three groups).
SIZES = np.array([9, 0, 17, 3, 11], np.int32)
E = len(SIZES)


_from_sizes = jax.jit(group_metadata_from_sizes, static_argnames=("num_tokens", "tile_m"))


def _meta(sizes=SIZES):
    return _from_sizes(jnp.asarray(sizes), num_tokens=T, tile_m=TM)


def _inputs(dtype, seed=0, util=None):
    rng = np.random.default_rng(seed)
    x = util.random_tokens(rng, (T, D), dtype)
    wg, wu = util.random_weights(rng, (E, D, X), dtype), util.random_weights(rng, (E, D, X), dtype)
    wd = util.random_weights(rng, (E, X, D), dtype)
    return x, wg, wu, wd, rng


@functools.partial(jax.jit, static_argnames=("impl",))
def _gmm_and_grads(x, w, meta, dy, impl):
    fn = (lambda x, w: reference.gmm_reference(x, w, meta)) if impl == "ref" else (
        lambda x, w: gmm(x, w, meta, implementation=impl))
    y, vjp = jax.vjp(fn, x, w)
    return (y, *vjp(dy))


@functools.partial(jax.jit, static_argnames=("impl",))
def _mlp_and_grads(x, wg, wu, wd, meta, dy, impl):
    fn = (lambda *a: reference.expert_mlp_reference(*a, meta)) if impl == "ref" else (
        lambda *a: expert_mlp(*a, meta, implementation=impl))
    y, vjp = jax.vjp(fn, x, wg, wu, wd)
    return (y, *vjp(dy))


@pytest.mark.parametrize("impl", IMPLS)
def test_gmm_values_and_grads(impl, util):
    dtype = jnp.float32  # bf16 gmm runs inside the bf16 expert_mlp test (forward and all of its backward)
    x, w, _, _, rng = _inputs(dtype, util=util)
    dy = util.random_tokens(rng, (T, X), dtype)
    meta = _meta()
    got = _gmm_and_grads(x, w, meta, dy, impl)
    want = _gmm_and_grads(x, w, meta, dy, "ref")
    for name, g, r in zip(("out", "dx", "dw"), got, want):
        util.assert_close(g, r, dtype, f"{impl} gmm {name}")
    assert got[0].dtype == dtype and got[2].dtype == dtype


@pytest.mark.parametrize("impl", IMPLS)
def test_tgmm_values(impl, util):
    dtype = jnp.float32  # bf16 tgmm is covered by the dw gradients above
    x, _, _, _, rng = _inputs(dtype, util=util)
    dy = util.random_tokens(rng, (T, X), dtype)
    meta = _meta()
    got = jax.jit(lambda a, b, m: tgmm(a, b, m, implementation=impl))(x, dy, meta)
    util.assert_close(got, reference.tgmm_reference(x, dy, meta), dtype, f"{impl} tgmm")
    np.testing.assert_array_equal(np.asarray(got[1], np.float32), 0)  # the empty group


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("impl", IMPLS)
def test_expert_mlp_values_and_grads(impl, dtype, util):
    x, wg, wu, wd, rng = _inputs(dtype, util=util)
    dy = util.random_tokens(rng, (T, D), dtype)
    meta = _meta()
    got = _mlp_and_grads(x, wg, wu, wd, meta, dy, impl)
    want = _mlp_and_grads(x, wg, wu, wd, meta, dy, "ref")
    for name, g, r in zip(("out", "dx", "dw_gate", "dw_up", "dw_down"), got, want):
        util.assert_close(g, r, dtype, f"{impl} expert_mlp {name}")
    for dw in got[2:]:
        np.testing.assert_array_equal(np.asarray(dw[1], np.float32), 0)  # empty group: zero gradient


@pytest.mark.parametrize("impl", IMPLS)
def test_rows_of_other_groups_do_not_leak(impl, util):
    """Row r depends only on x[r]: a nan row poisons no other row (selects, not multiplies by a mask)."""
    x, wg, wu, wd, _ = _inputs(jnp.float32, util=util)
    x = x.at[10].set(jnp.nan)  # group 2, in tile 0 next to group 0's rows
    y = _mlp_and_grads(x, wg, wu, wd, _meta(), jnp.zeros((T, D), jnp.float32), impl)[0]  # already compiled
    bad = np.flatnonzero(~np.isfinite(np.asarray(y)).all(axis=1))
    assert bad.tolist() == [10]


def _sizes_strategy():
    """Random sizes summing to T with zeros likely and sometimes one giant group."""
    weights = st.lists(st.sampled_from([0, 0, 1, 3, 10, 1000]), min_size=E, max_size=E)

    def compose(w):
        w = np.asarray(w, np.float64)
        w = w if w.sum() else np.eye(E)[0]
        raw = w / w.sum() * T
        sizes = np.floor(raw).astype(np.int32)
        sizes[np.argsort(raw - sizes)[::-1][: T - sizes.sum()]] += 1
        return sizes

    return weights.map(compose)


@pytest.mark.parametrize("impl", IMPLS)
def test_random_group_sizes(impl, util):
    x, wg, wu, wd, rng = _inputs(jnp.float32, seed=1, util=util)
    dy_x, dy_d = util.random_tokens(rng, (T, X), jnp.float32), util.random_tokens(rng, (T, D), jnp.float32)

    @settings(max_examples=8, deadline=None, derandomize=True)
    @given(sizes=_sizes_strategy())
    def check(sizes):
        meta = _meta(sizes)  # traced-shape-stable: every example reuses the compiled functions
        for name, g, r in zip(("out", "dx", "dw"), _gmm_and_grads(x, wg, meta, dy_x, impl),
                              _gmm_and_grads(x, wg, meta, dy_x, "ref")):
            util.assert_close(g, r, jnp.float32, f"{impl} gmm {name} sizes={sizes.tolist()}")
        for name, g, r in zip(("out", "dx", "dw_gate", "dw_up", "dw_down"),
                              _mlp_and_grads(x, wg, wu, wd, meta, dy_d, impl),
                              _mlp_and_grads(x, wg, wu, wd, meta, dy_d, "ref")):
            util.assert_close(g, r, jnp.float32, f"{impl} expert_mlp {name} sizes={sizes.tolist()}")

    check()


def test_xla_chunk_schedule_with_big_and_small_chunks(util):
    """The CPU path with tiny chunks (big=8, small=4) so the test shapes hit both loops and boundaries."""
    from kernels.gmm import xla

    x, wg, wu, wd, rng = _inputs(jnp.float32, seed=2, util=util)
    dy = util.random_tokens(rng, (T, X), jnp.float32)
    wt = jnp.swapaxes(wg, 1, 2)  # [E, X, D] for the transposed-rhs product
    kw = dict(big_rows=8, small_rows=4)

    @jax.jit
    def both(meta):
        got = (xla.gmm_xla(x, wg, meta, **kw), xla.gmm_xla(x, wt, meta, transpose_rhs=True, **kw),
               xla.tgmm_xla(x, dy, meta, **kw), *xla.expert_mlp_xla(x, wg, wu, wd, meta, save_preact=True, **kw))
        want = (reference.gmm_reference(x, wg, meta), reference.gmm_reference(x, wt, meta, transpose_rhs=True),
                reference.tgmm_reference(x, dy, meta), reference.expert_mlp_reference(x, wg, wu, wd, meta),
                reference.gmm_reference(x, wg, meta), reference.gmm_reference(x, wu, meta))
        return got, want

    @settings(max_examples=6, deadline=None, derandomize=True)
    @given(sizes=_sizes_strategy())
    def check(sizes):
        got, want = both(_meta(sizes))
        for name, g, r in zip(("gmm", "gmm^T", "tgmm", "mlp", "gate", "up"), got, want):
            util.assert_close(g, r, jnp.float32, f"xla {name} sizes={sizes.tolist()}")

    check()
