"""The routed expert MLP over per-slot weights: each token through its slot's SwiGLU, computing only what is used.

Read-ME's sliced MoE keeps the routed part of every expert in one of C slots; slot c holds two separate
arrays ``(w_gate_up_D2X, w_down_XD)``: the gate and up projections side by side ([D, 2X], gate columns first),
because one [D, 2X] matmul reads its weights at a higher rate than two [D, X] ones (measured: 28 against
18-22 GB/s for a one-row product on the project's CPU). Separate arrays, not one stacked ``[C, D, X]`` array, because
XLA on CPU copies a dynamically indexed ``[D, X]`` slice before a matmul (measured: the copy costs more than
the matmul at decode sizes), and because a serving engine can then replace one slot's arrays without
touching, copying or recompiling anything else.

``slot_mlp(x_TD, plan, experts)`` for T tokens and a plan built once per forward (every layer reuses it):

1. ``make_slot_plan(slot_T, C)``: rows sorted by slot (stable), each slot's row count and first row.
2. For each slot c, in slot order (a static loop over C):
   a. whole chunks of ``big`` rows from the slot's first row: a loop whose trip count is read at run time;
   b. the remainder r < big in one chunk of the smallest tail size >= r, picked by ``lax.switch`` (r == 0 runs
      nothing). A tail chunk may run past the slot's rows into the next slots' rows; those rows are written
      again, correctly, when their own slot runs later (slots run in sorted order), and past the last slot they
      land in padding. So no select is needed, and inf/nan of a neighbour never mixes into a result.
3. Unsort.

Chunk sizes are static and chosen from T at trace time (``chunk_sizes``). For a decode step (T <= 16) there
are no whole chunks and the tail sizes are 1, 2, 4, ... up to T's power of two: when every token shares one slot
(what expert-aware batching produces) the step is one dense SwiGLU over that slot's weights. Calls up to
``BIG_ROWS`` add 1.5x steps (3, 6, 12, ...), so a tail computes at most a third more rows than it keeps. Above
``BIG_ROWS`` the tails are few powers of two, the smallest at least T/16 and 32 (T > 1024: one 128-row tail).
Every tail size is compiled once per slot per layer, so fewer tails compile faster: on the demo's 30-layer,
6-slot MoE a 4 x 512 forward compiled in 11.5 s instead of 31.5 s with all nine sizes from 8, and ran as fast
(2.77 s both), with bitwise equal outputs (``scripts/slot_compile_bench.py``, ``docs/benchmarks.md``). Unused
slots cost one ``switch`` that runs nothing. No dense computation over all experts ever happens, on any backend.

Inference only: the dynamic trip counts make the loops non-differentiable in reverse mode (training uses the
masked form of the MoE, or ``expert_mlp`` with its custom VJP).

Letters as in the project's key: T tokens, D model width, X one slot's routed width, C slots.
"""

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from kernels.gmm.checks import GmmInputError

BIG_ROWS = 128  # whole-chunk height at prefill sizes
# Remainder chunk heights: powers of two and 1.5x powers of two, so a chunk wastes at most a third of its rows
# (small matmuls on a CPU cost about the same for 1 or 4 rows, so decode sizes stop at powers of two).
TAILS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
DECODE_ROWS = 16  # up to here every chunk height is a power of two
PREFILL_TAIL_MIN = 32  # above BIG_ROWS the smallest tail (measured: smaller ones cost compile time, not speed)


@dataclasses.dataclass(frozen=True)
class SlotPlan:
    """Which sorted rows belong to which slot; a pytree, built once per forward."""

    sort_idx_T: jax.Array  # int32, sorted row r holds token sort_idx_T[r]
    unsort_idx_T: jax.Array  # int32, token t sits at sorted row unsort_idx_T[t]
    sizes_C: jax.Array  # int32, rows per slot
    starts_C: jax.Array  # int32, first sorted row of each slot

    @property
    def num_tokens(self) -> int:
        return self.sort_idx_T.shape[0]

    @property
    def num_slots(self) -> int:
        return self.sizes_C.shape[0]


jax.tree_util.register_dataclass(SlotPlan, data_fields=[f.name for f in dataclasses.fields(SlotPlan)],
                                 meta_fields=[])


def make_slot_plan(slot_T, num_slots: int) -> SlotPlan:
    """The plan for ``slot_T`` (int [T], values in [0, num_slots); the caller maps experts to slots and checks)."""
    if slot_T.ndim != 1 or slot_T.shape[0] < 1:
        raise GmmInputError(f"slot_T must be 1-D [T] with T >= 1, got shape {tuple(slot_T.shape)}")
    if not isinstance(num_slots, int) or num_slots < 1:
        raise GmmInputError(f"num_slots must be a positive int, got {num_slots!r}")
    slot_T = slot_T.astype(jnp.int32)
    sort_idx_T = jnp.argsort(slot_T, stable=True).astype(jnp.int32)
    unsort_idx_T = jnp.zeros_like(sort_idx_T).at[sort_idx_T].set(jnp.arange(slot_T.shape[0], dtype=jnp.int32))
    sizes_C = jnp.bincount(slot_T, length=num_slots).astype(jnp.int32)
    starts_C = (jnp.cumsum(sizes_C) - sizes_C).astype(jnp.int32)
    return SlotPlan(sort_idx_T, unsort_idx_T, sizes_C, starts_C)


def chunk_sizes(num_tokens: int) -> tuple[int, tuple[int, ...]]:
    """(whole-chunk rows, tail sizes) for T tokens: tails up to T's bucket, whole chunks only above BIG_ROWS."""
    top = 1 << max(num_tokens - 1, 0).bit_length()
    if num_tokens <= DECODE_ROWS:
        return top, tuple(1 << k for k in range(top.bit_length()))
    if num_tokens <= BIG_ROWS:
        return top, tuple(t for t in TAILS if t <= top)
    # prefill sizes: a remainder of r rows runs in at most max(2r, least) rows, and each tail size left out saves
    # its compilation (30 layers x C slots of it)
    least = min(max(PREFILL_TAIL_MIN, top // 16), BIG_ROWS)
    return BIG_ROWS, tuple(t for t in TAILS if t >= least and t & (t - 1) == 0)


def swiglu(x_TD, w_gate_up_D2X, w_down_XD):
    """(silu(x @ Wg) * (x @ Wu)) @ Wd with ``w_gate_up_D2X`` = [Wg | Wu], as the dense model computes its MLP."""
    h_T2X = x_TD @ w_gate_up_D2X
    x = w_down_XD.shape[0]
    return (jax.nn.silu(h_T2X[..., :x]) * h_T2X[..., x:]) @ w_down_XD


def _check_experts(x_TD, plan: SlotPlan, experts) -> None:
    if x_TD.ndim != 2 or x_TD.shape[0] != plan.num_tokens:
        raise GmmInputError(f"x_TD must be [T={plan.num_tokens}, D], got shape {tuple(x_TD.shape)}")
    if len(experts) != plan.num_slots:
        raise GmmInputError(f"{len(experts)} slots of weights but the plan has {plan.num_slots} slots")
    d = x_TD.shape[1]
    for c, ws in enumerate(experts):
        if len(ws) != 2:
            raise GmmInputError(f"slot {c}: expected (w_gate_up_D2X, w_down_XD), got {len(ws)} arrays")
        gu, dn = ws
        x = dn.shape[0]
        if gu.shape != (d, 2 * x) or dn.shape != (x, d):
            raise GmmInputError(f"slot {c}: weight shapes {gu.shape}, {dn.shape} do not fit D={d} "
                                f"(want [D, 2X], [X, D])")
        for w in ws:
            if w.dtype != x_TD.dtype:
                raise GmmInputError(f"slot {c}: weights have dtype {w.dtype} but the tokens {x_TD.dtype}")


def slot_mlp(x_TD, plan: SlotPlan, experts):
    """Each token through its slot's SwiGLU (module docstring); [T, D] in token order.

    Args:
      x_TD: [T, D] in token order.
      plan: ``make_slot_plan(slot_T, C)`` for these T tokens.
      experts: C tuples ``(w_gate_up_D2X, w_down_XD)`` in the dtype of x_TD (usually every slot has the same X).
    """
    _check_experts(x_TD, plan, experts)
    T, D = x_TD.shape
    big, tails = chunk_sizes(T)
    pad = max(big, max(tails))
    xs = jnp.pad(x_TD[plan.sort_idx_T], ((0, pad), (0, 0)))  # a chunk may read (and write) past row T
    out = jnp.zeros((T + pad, D), x_TD.dtype)
    for c, weights in enumerate(experts):
        start, size = plan.starts_C[c], plan.sizes_C[c]

        def whole(i, out, start=start, weights=weights):
            row = start + i * big
            y = swiglu(lax.dynamic_slice_in_dim(xs, row, big), *weights)
            return lax.dynamic_update_slice_in_dim(out, y.astype(out.dtype), row, 0)

        n_whole = size // big if T > big else jnp.int32(0)
        if T > big:
            out = lax.fori_loop(0, n_whole, whole, out)
        tail_row, rest = start + n_whole * big, size - n_whole * big
        # Branch 0 runs nothing; branch k computes the tail in a chunk of tails[k-1] rows.
        pick = jnp.where(rest == 0, 0, 1 + jnp.searchsorted(jnp.asarray(tails), rest, side="left"))

        def tail(rows, out, row=tail_row, weights=weights):
            y = swiglu(lax.dynamic_slice_in_dim(xs, row, rows), *weights)
            return lax.dynamic_update_slice_in_dim(out, y.astype(out.dtype), row, 0)

        branches = [lambda out: out] + [lambda out, rows=rows: tail(rows, out) for rows in tails]
        out = lax.switch(pick, branches, out)
    return out[:T][plan.unsort_idx_T]


def slot_mlp_reference(x_TD, slot_T, experts):
    """The oracle: every slot over every row, each row keeping its own slot's result (C times the work)."""
    out = jnp.zeros_like(x_TD)
    for c, weights in enumerate(experts):
        out = jnp.where((slot_T == c)[:, None], swiglu(x_TD, *weights).astype(x_TD.dtype), out)
    return out
