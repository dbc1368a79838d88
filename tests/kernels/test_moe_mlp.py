"""The MoE call site: tokens in sequence order through their expert, against a per-token gather einsum."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from kernels.gmm import make_moe_metadata, moe_mlp
from kernels.gmm.reference import moe_mlp_reference, silu_glu

B, L, D, X, E = 2, 9, 32, 16, 4


def _weights(rng, util, layers=1, num_experts=E):
    return [tuple(util.random_weights(rng, s, jnp.float32)
                  for s in ((num_experts, D, X), (num_experts, D, X), (num_experts, X, D))) for _ in range(layers)]


@pytest.mark.parametrize("impl", ["xla", "pallas_interpret"])
def test_two_layers_share_one_metadata(impl, util):
    """Metadata built once per forward serves every layer (different weights per layer)."""
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, E - 1, (B, L)))  # expert E-1 gets no token
    x = util.random_tokens(rng, (B, L, D), jnp.float32)
    layers = _weights(rng, util, layers=2)

    @jax.jit
    def forward(x, ids, layers):
        meta = make_moe_metadata(ids, E, tile_m=8)  # once
        for w in layers:
            x = x + moe_mlp(x, *w, meta, implementation=impl)
        return x

    @jax.jit
    def forward_reference(x, ids, layers):
        for w in layers:
            x = x + moe_mlp_reference(x, ids, *w)
        return x

    util.assert_close(forward(x, ids, layers), forward_reference(x, ids, layers), jnp.float32, impl)


def test_gradients_through_sort_mlp_unsort(util):
    rng = np.random.default_rng(2)
    ids = jnp.asarray(rng.integers(0, E, (B, L)))
    x = util.random_tokens(rng, (B, L, D), jnp.float32)
    w = _weights(rng, util)[0]
    meta = make_moe_metadata(ids, E)

    def loss(fn):
        return jax.jit(jax.grad(lambda x, w: jnp.sum(fn(x, w) ** 2), argnums=(0, 1)))(x, w)

    got = loss(lambda x, w: moe_mlp(x, *w, meta, implementation="xla"))
    want = loss(lambda x, w: moe_mlp_reference(x, ids, *w))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        util.assert_close(a, b, jnp.float32, "grad")


def test_one_expert_is_the_dense_swiglu(util):
    rng = np.random.default_rng(1)
    x = util.random_tokens(rng, (B, L, D), jnp.float32)
    (wg, wu, wd), = _weights(rng, util, num_experts=1)
    meta = make_moe_metadata(jnp.zeros((B, L), jnp.int32), 1)
    dense = jnp.einsum("BLX,XD->BLD", silu_glu(x @ wg[0], x @ wu[0], jnp.float32), wd[0])
    util.assert_close(jax.jit(moe_mlp)(x, wg, wu, wd, meta), dense, jnp.float32, "E=1")
