"""The engine's jitted programs: pure functions of (flat state leaves, caches, per-row inputs).

One cache row per live sequence (``readme_jax.layers.RowWrite``): a step runs B of the R rows, each with its
own length, and attends over a window of ``W`` slots (a static bucket covering the batch's longest row), so a
step's cost follows the batch's real lengths, not the engine's context. Both caches (backbone and router) are
donated, so XLA writes the new entries in place.

* ``route(...)``: the pre-gating router over a prompt (admission); returns its tokens' experts and fills the
  router's cache row.
* ``step(...)``: the backbone over B rows of L new tokens each (a decode: L = 1; a prefill chunk: L a bucket),
  each token on its pre-gated expert; samples each row's next token from its last real position and, for the
  rows that emit one, runs the router on that token at once (one step ahead of the backbone), so the host
  gets every new token's expert with the token.

The model state is passed as its flat list of leaves (the engine swaps slot leaves and the slot table between
steps; the shapes never change, so nothing recompiles). ``compiles`` counts compiled executables, ``shapes``
the distinct shapes called: they are equal when every shape compiled exactly once.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from readme_jax.layers import RowWrite, row_mask
from readme_jax.sampling import sample


class Programs:
    """The jitted ``route`` and ``step`` of one engine (its graphdefs and state layouts are static)."""

    def __init__(self, graphdef, treedef, router_graphdef=None, router_treedef=None, moe: bool = True):
        self.traces = 0
        self._graphdef, self._treedef = graphdef, treedef
        self._router = (router_graphdef, router_treedef) if router_graphdef is not None else None
        self._moe = moe
        self.shapes = set()  # every (program, input shapes, static args) called: one compile each, no more
        self._step_jit = jax.jit(self._step, static_argnames=("window", "sampled"), donate_argnums=(2, 3))
        self._route_jit = jax.jit(self._route, static_argnames=("window",), donate_argnums=(1,))

    @property
    def compiles(self) -> int:
        """Executables compiled so far. A trace is not enough to count: the same trace compiles again when an
        input's placement changes (an uncommitted array where a committed one was), so the engine commits every
        leaf to the device when it is built and this counts jit's executables."""
        try:
            return self._step_jit._cache_size() + self._route_jit._cache_size()
        except AttributeError:  # a jax without the private counter
            return self.traces

    def step(self, leaves, router_leaves, cache, rcache, tokens_BL, *arrays, window: int, sampled: bool):
        self.shapes.add(("step", tokens_BL.shape, window, sampled))
        return self._step_jit(leaves, router_leaves, cache, rcache, tokens_BL, *arrays, window=window,
                              sampled=sampled)

    def route(self, router_leaves, rcache, tokens_BL, *arrays, window: int):
        self.shapes.add(("route", tokens_BL.shape, window))
        return self._route_jit(router_leaves, rcache, tokens_BL, *arrays, window=window)

    def _model(self, leaves):
        return nnx.merge(self._graphdef, jax.tree_util.tree_unflatten(self._treedef, leaves))

    def _router_model(self, leaves):
        graphdef, treedef = self._router
        return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, leaves))

    def _route(self, router_leaves, rcache, tokens_BL, pos_BL, write_BL, rows_B, *, window: int):
        self.traces += 1  # runs only while tracing
        router = self._router_model(router_leaves)
        x_BLD, rcache = router.hidden(tokens_BL, pos_BL, None, rcache, RowWrite(rows_B, write_BL, window),
                                      mask_BLS=row_mask(pos_BL, window))
        return jnp.argmax(router.head(x_BLD), axis=-1).astype(jnp.int32), rcache

    def _step(self, leaves, router_leaves, cache, rcache, tokens_BL, pos_BL, write_BL, experts_BL, rows_B, last_B,
              emit_B, sampling, *, window: int, sampled: bool):
        """Returns (next token [B], its expert [B], cache, router cache).

        ``pos_BL``: RoPE positions (= cache slots); ``write_BL``: the slots written, S (out of range) for
        padding; ``rows_B``: cache rows, R for padding rows; ``last_B``: index of each row's last real token;
        ``emit_B``: rows whose sampled token is kept (a non-final prefill chunk's is not, so the router must not
        see it); ``sampling``: (temperature, top_k, top_p, greedy, seed, step) per row.
        """
        self.traces += 1
        model = self._model(leaves)
        B = tokens_BL.shape[0]
        route = experts_BL if self._moe else None
        x_BLD, cache = model.hidden(tokens_BL, pos_BL, None, cache, RowWrite(rows_B, write_BL, window), route,
                                    mask_BLS=row_mask(pos_BL, window))
        x_B1D = x_BLD[jnp.arange(B), last_B][:, None, :]
        logits_BV = model.head(x_B1D)[:, 0, :]
        tok_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
        if sampled:
            temperature_B, top_k_B, top_p_B, greedy_B, seed_B, count_B = sampling

            def one(logits_V, temperature, top_k, top_p, seed, count):
                key = jax.random.fold_in(jax.random.key(seed), count)
                return sample(logits_V[None], key, temperature, top_k, top_p, False)[0]

            drawn_B = jax.vmap(one)(logits_BV, temperature_B, top_k_B, top_p_B, seed_B, count_B)
            tok_B = jnp.where(greedy_B, tok_B, drawn_B)
        if self._router is None:
            return tok_B, jnp.zeros_like(tok_B), cache, rcache
        router = self._router_model(router_leaves)
        next_pos_B1 = (pos_BL[jnp.arange(B), last_B] + 1)[:, None]
        S = rcache[0][0].shape[2]
        write_B1 = jnp.where(emit_B[:, None], next_pos_B1, S)
        xr_B1D, rcache = router.hidden(tok_B[:, None], jnp.minimum(next_pos_B1, S - 1), None, rcache,
                                       RowWrite(rows_B, write_B1, window), mask_BLS=row_mask(next_pos_B1, window))
        expert_B = jnp.argmax(router.head(xr_B1D)[:, 0, :], axis=-1).astype(jnp.int32)
        return tok_B, expert_B, cache, rcache
