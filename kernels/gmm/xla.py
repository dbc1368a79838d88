"""The CPU path: XLA loops over each group's rows in chunks (sort + segment matmuls).

Why this formulation (measured by ``python -m kernels.bench --formulations``, docs/benchmarks.md): on the
project's 2-core CPU ``jax.lax.ragged_dot`` costs about as much as computing every expert densely; the
padded-capacity einsum needs a static capacity (a wrong guess drops tokens) and pays for the largest
group E times; a loop over the kernels' (tile, group) pairs recomputes a whole tile at every group
boundary. Here the rows of each group, from the group's first row, are cut into
  1. ``size // big_rows`` big chunks: one [big_rows, I] x [I, O] matmul each and a plain store;
  2. the remainder in one chunk of the smallest size small_rows * 2**k that holds it: it may run past
     the group, and a select (not a multiply, so inf/nan next door cannot leak in) keeps only the
     group's rows. Small matmuls are bound by reading the weights, so one masked chunk costs less than
     several exact ones.
All chunks of one size run in one flat loop over a precomputed (group, first row) schedule: no nested
loops and no lax.cond, because XLA on CPU then copies the whole loop-carried output at every step, which
cost more than the matmuls at prefill sizes.
Per group, fewer rows than max(remainder, small_rows) are computed in vain. Trip counts are read at run
time from the group sizes; every loop has a static bound.

Gradients go through the custom VJP in ``vjp.py``: differentiating the loops would build a full
[E, I, O] weight cotangent per iteration.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from kernels.gmm.reference import precision_for, silu_glu

BIG_ROWS = 128
SMALL_ROWS = 16  # capped for decode-sized calls: see _small_rows


def _small_rows(meta, small_rows):
    """At decode sizes a 16-row chunk would be mostly waste: use about T/E rows (a power of two) instead."""
    if small_rows is not None:
        return small_rows
    per_group = -(-meta.num_tokens // meta.num_experts)
    return min(SMALL_ROWS, 1 << (per_group - 1).bit_length())


def _schedule(counts_E, first_row_E, rows: int, max_chunks: int):
    """Chunk slot c -> (group, first row); group g owns counts_E[g] consecutive chunks from first_row_E[g]."""
    ends = jnp.cumsum(counts_E, dtype=jnp.int32)
    begins = ends - counts_E
    c = jnp.arange(max_chunks, dtype=jnp.int32)
    group = jnp.searchsorted(ends, c, side="right", method="compare_all")
    group = jnp.minimum(group, counts_E.shape[0] - 1).astype(jnp.int32)
    return group, first_row_E[group] + (c - begins[group]) * rows, ends[-1]


def _for_chunks(meta, state, step, big_rows: int, small_rows: int):
    """Run step(state, group, row0, rows, keep) over every chunk; keep is None for whole chunks.

    Flat loops only (see the module docstring): one loop for the big chunks, one per tail size.
    """
    if big_rows & (big_rows - 1) or small_rows & (small_rows - 1) or not 0 < small_rows <= big_rows:
        raise ValueError(f"big_rows={big_rows} and small_rows={small_rows} must be powers of two, small <= big")
    sizes, starts, ends = meta.group_sizes_E, meta.group_starts_E, meta.group_ends_E
    num_tokens, num_experts = meta.num_tokens, meta.num_experts

    def run(counts, first_row, rows, max_chunks, masked, state):
        if max_chunks == 0:
            return state
        g, r, n = _schedule(counts, first_row, rows, max_chunks)

        def body(i, s):
            keep = r[i] + jnp.arange(rows, dtype=jnp.int32) < ends[g[i]] if masked else None
            return step(s, g[i], r[i], rows, keep)

        return lax.fori_loop(0, n, body, state)

    # (1) Whole big chunks from each group's first row.
    n_big = sizes // big_rows
    state = run(n_big, starts, big_rows, num_tokens // big_rows, False, state)
    # (2) Each group's remainder (< big_rows) in one chunk of the smallest size small_rows * 2**k that
    #     holds it: one loop per size over the groups that picked it.
    tail_row = starts + n_big * big_rows
    rem = ends - tail_row
    tails = [small_rows << k for k in range((big_rows // small_rows).bit_length())]
    tails = [t for i, t in enumerate(tails) if i == 0 or tails[i - 1] < num_tokens]  # none far above T
    lower = 0
    for t in tails:
        picked = ((rem > lower) & (rem <= t)).astype(jnp.int32)
        at_most = min(num_experts, num_tokens // (lower + 1))  # each picked group has > lower rows
        state = run(picked, tail_row, t, at_most, True, state)
        lower = t
    return state


def _rows(a, row0, rows):
    return lax.dynamic_slice_in_dim(a, row0, rows)


def _put(out, value, row0, keep):
    """Store value at row0; with a mask, rows outside the group keep their old contents."""
    value = value.astype(out.dtype)
    if keep is not None:
        value = jnp.where(keep[:, None], value, _rows(out, row0, value.shape[0]))
    return lax.dynamic_update_slice_in_dim(out, value, row0, 0)


def _pad(a, rows: int):
    return jnp.pad(a, ((0, rows), (0, 0)))


def _dot(a, b, *, transpose_b: bool = False):
    """a @ b (or a @ b.T) with fp32 accumulation."""
    dims = (((1,), (1,)), ((), ())) if transpose_b else (((1,), (0,)), ((), ()))
    return lax.dot_general(a, b, dims, precision=precision_for(a.dtype), preferred_element_type=jnp.float32)


@functools.partial(jax.jit, static_argnames=("transpose_rhs", "big_rows", "small_rows"))
def gmm_xla(x_TI, w_EIO, meta, *, transpose_rhs: bool = False, big_rows: int = BIG_ROWS,
            small_rows: int | None = None):
    """out[r] = x[r] @ w[group(r)] (or w[group(r)].T); rows sorted by expert."""
    small_rows = _small_rows(meta, small_rows)
    width_out = w_EIO.shape[1] if transpose_rhs else w_EIO.shape[2]
    x = _pad(x_TI, big_rows)  # the tail chunk may read past T

    def step(out, g, r, rows, keep):
        return _put(out, _dot(_rows(x, r, rows), w_EIO[g], transpose_b=transpose_rhs), r, keep)

    out = jnp.zeros((meta.num_tokens + big_rows, width_out), x_TI.dtype)
    return _for_chunks(meta, out, step, big_rows, small_rows)[: meta.num_tokens]


@functools.partial(jax.jit, static_argnames=("big_rows", "small_rows"))
def tgmm_xla(x_TI, dy_TO, meta, *, big_rows: int = BIG_ROWS, small_rows: int | None = None):
    """dW[e] = x[rows of e].T @ dy[rows of e] -> [E, I, O] in the input dtype; empty groups give zeros."""
    small_rows = _small_rows(meta, small_rows)
    x, dy = _pad(x_TI, big_rows), _pad(dy_TO, big_rows)

    def step(dw, g, r, rows, keep):
        xc, dyc = _rows(x, r, rows), _rows(dy, r, rows)
        if keep is not None:  # zero the next group's rows in both operands (a select: nan cannot leak)
            xc, dyc = jnp.where(keep[:, None], xc, 0), jnp.where(keep[:, None], dyc, 0)
        contrib = lax.dot_general(xc, dyc, (((0,), (0,)), ((), ())), precision=precision_for(x_TI.dtype),
                                  preferred_element_type=jnp.float32)
        total = lax.dynamic_index_in_dim(dw, g, keepdims=False) + contrib
        return lax.dynamic_update_index_in_dim(dw, total, g, 0)

    dw_EIO = jnp.zeros((meta.num_experts, x_TI.shape[1], dy_TO.shape[1]), jnp.float32)
    return _for_chunks(meta, dw_EIO, step, big_rows, small_rows).astype(x_TI.dtype)


@functools.partial(jax.jit, static_argnames=("save_preact", "big_rows", "small_rows"))
def expert_mlp_xla(x_TD, w_gate_EDX, w_up_EDX, w_down_EXD, meta, *, save_preact: bool = False,
                   big_rows: int = BIG_ROWS, small_rows: int | None = None):
    """Fused SwiGLU per chunk: gate, up, activation and down in one loop step; h is never materialised.

    With ``save_preact`` also returns the gate and up pre-activations [T, X] for the backward pass.
    """
    small_rows = _small_rows(meta, small_rows)
    x = _pad(x_TD, big_rows)

    def step(carry, g, r, rows, keep):
        xc = _rows(x, r, rows)
        gate, up = _dot(xc, w_gate_EDX[g]), _dot(xc, w_up_EDX[g])
        out = _put(carry[0], _dot(silu_glu(gate, up, x_TD.dtype), w_down_EXD[g]), r, keep)
        if not save_preact:
            return (out,)
        return out, _put(carry[1], gate, r, keep), _put(carry[2], up, r, keep)

    rows_out = meta.num_tokens + big_rows
    init = (jnp.zeros((rows_out, x_TD.shape[1]), x_TD.dtype),)
    if save_preact:
        init += (jnp.zeros((rows_out, w_gate_EDX.shape[2]), x_TD.dtype),) * 2
    res = _for_chunks(meta, init, step, big_rows, small_rows)
    res = tuple(a[: meta.num_tokens] for a in res)
    return res if save_preact else res[0]
