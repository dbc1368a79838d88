"""Group metadata: sort tokens by expert once per forward, reuse the result in every layer.

Read-ME routes each token to one expert, the same in every layer, so the permutation that groups tokens by
expert, the group sizes and the tile maps the kernels need depend only on the router's output. They are
computed once by ``make_group_metadata`` and passed to every layer's expert MLP.

Layout. "Sorted" rows are the tokens ordered by expert (stable, so ties keep token order); group ``e``
owns sorted rows ``[group_starts_E[e], group_ends_E[e])``; empty groups are allowed. This is the
``jax.lax.ragged_dot`` contract, so the reference oracle needs no conversion.

Tiles. Kernels walk the sorted rows in tiles of ``tile_m`` rows. Groups are not padded, so a tile can hold
rows of several groups. Each (tile, group) pair with at least one row in common is one "pair"; a kernel
computes tile x W[group] once per pair and keeps the rows of that group. Pairs are listed group-major,
which is also tile-major because groups are contiguous, so the pairs of one tile form one contiguous range.

Kernel letters (README "Dimension key"): M = row tiles (cdiv(T, tile_m)); J = (tile, group) pairs, a
static upper bound M + E - 1 (a tile boundary inside a group adds nothing; each boundary between two
non-empty groups inside a tile adds one pair).
"""

import dataclasses

import numpy as np
import jax
import jax.numpy as jnp

from kernels.gmm.checks import GmmInputError, concrete_or_none, runtime_check

DEFAULT_TILE_M = 128


@dataclasses.dataclass(frozen=True)
class GroupMetadata:
    """Everything the grouped ops need about the expert assignment; a pytree (tile_m is static)."""

    group_sizes_E: jax.Array  # int32, rows per expert
    group_starts_E: jax.Array  # int32, first sorted row of each group
    group_ends_E: jax.Array  # int32, one past the last sorted row; group_ends_E[-1] == T
    sort_idx_T: jax.Array  # int32, sorted row r holds token sort_idx_T[r]
    unsort_idx_T: jax.Array  # int32, token t sits at sorted row unsort_idx_T[t]
    pair_tile_J: jax.Array  # int32, row tile of each (tile, group) pair; entries >= num_pairs repeat the last
    pair_group_J: jax.Array  # int32, group of each pair
    tile_pair_start_M: jax.Array  # int32, pairs of tile m are [tile_pair_start_M[m], tile_pair_end_M[m])
    tile_pair_end_M: jax.Array
    num_pairs: jax.Array  # int32 scalar, number of valid pairs (<= J)
    tile_m: int  # rows per tile (static)

    @property
    def num_tokens(self) -> int:
        return self.sort_idx_T.shape[0]

    @property
    def num_experts(self) -> int:
        return self.group_sizes_E.shape[0]

    @property
    def num_tiles(self) -> int:
        return self.tile_pair_start_M.shape[0]

    @property
    def padded_rows(self) -> int:
        """Rows after padding T up to whole tiles (what the tiled kernels allocate)."""
        return self.num_tiles * self.tile_m


jax.tree_util.register_dataclass(
    GroupMetadata,
    data_fields=[f.name for f in dataclasses.fields(GroupMetadata) if f.name != "tile_m"],
    meta_fields=["tile_m"],
)


def effective_tile_m(tile_m: int, num_tokens: int) -> int:
    """Cap tile_m at the next power of two >= T (at least 16) so a decode step does not pay for 128 rows."""
    if not isinstance(tile_m, (int, np.integer)) or tile_m < 1:
        raise GmmInputError(f"tile_m must be a positive int, got {tile_m!r}")
    floor = min(int(tile_m), 16)
    return min(int(tile_m), max(floor, 1 << max(num_tokens - 1, 0).bit_length()))


def _check_ids(expert_id_T, num_experts: int, check: bool) -> None:
    if expert_id_T.ndim != 1:
        raise GmmInputError(f"expert_id_T must be 1-D [T], got shape {tuple(expert_id_T.shape)}")
    if expert_id_T.shape[0] < 1:
        raise GmmInputError("expert_id_T is empty: need at least one token")
    if not jnp.issubdtype(expert_id_T.dtype, jnp.integer):
        raise GmmInputError(f"expert_id_T must be integer, got {expert_id_T.dtype}")
    if not isinstance(num_experts, (int, np.integer)) or num_experts < 1:
        raise GmmInputError(f"num_experts must be a positive int, got {num_experts!r}")
    ids = concrete_or_none(expert_id_T)
    if ids is not None:
        bad = (ids < 0) | (ids >= num_experts)
        if bad.any():
            raise GmmInputError(
                f"expert ids must lie in [0, {num_experts}); got {ids[bad][:5].tolist()} "
                f"at token(s) {np.flatnonzero(bad)[:5].tolist()}"
            )
    elif check:
        ok = jnp.all((expert_id_T >= 0) & (expert_id_T < num_experts))
        runtime_check(ok, f"expert ids must lie in [0, {num_experts})")


def _check_sizes(group_sizes_E, num_tokens: int, check: bool) -> None:
    if group_sizes_E.ndim != 1 or group_sizes_E.shape[0] < 1:
        raise GmmInputError(f"group_sizes_E must be 1-D [E] with E >= 1, got shape {tuple(group_sizes_E.shape)}")
    if not jnp.issubdtype(group_sizes_E.dtype, jnp.integer):
        raise GmmInputError(f"group_sizes_E must be integer, got {group_sizes_E.dtype}")
    if not isinstance(num_tokens, (int, np.integer)) or num_tokens < 1:
        raise GmmInputError(f"num_tokens must be a positive int, got {num_tokens!r}")
    sizes = concrete_or_none(group_sizes_E)
    if sizes is not None:
        if (sizes < 0).any():
            raise GmmInputError(f"group sizes must be >= 0, got {sizes.tolist()}")
        if int(sizes.sum()) != num_tokens:
            raise GmmInputError(
                f"group sizes sum to {int(sizes.sum())} but there are {num_tokens} tokens: {sizes.tolist()}"
            )
    elif check:
        ok = jnp.all(group_sizes_E >= 0) & (jnp.sum(group_sizes_E) == num_tokens)
        runtime_check(ok, f"group sizes must be >= 0 and sum to the token count {num_tokens}")


def _build(group_sizes_E, sort_idx_T, unsort_idx_T, tile_m: int) -> GroupMetadata:
    """Offsets and the tile/pair maps from group sizes (the numbered steps below)."""
    num_tokens = sort_idx_T.shape[0]
    num_experts = group_sizes_E.shape[0]
    tm = effective_tile_m(tile_m, num_tokens)
    num_tiles = -(-num_tokens // tm)
    max_pairs = num_tiles + num_experts - 1
    sizes = group_sizes_E.astype(jnp.int32)

    # (1) Group row ranges in the sorted order: [starts, ends), ends[-1] == T.
    ends = jnp.cumsum(sizes, dtype=jnp.int32)
    starts = ends - sizes

    # (2) Tiles each group touches: first..last inclusive; an empty group touches none.
    first_tile = starts // tm
    last_tile = (ends - 1) // tm
    pair_count = jnp.where(sizes > 0, last_tile - first_tile + 1, 0)

    # (3) Pairs are numbered group-major: group e owns pairs [pair_starts[e], pair_ends[e]).
    pair_ends = jnp.cumsum(pair_count, dtype=jnp.int32)
    pair_starts = pair_ends - pair_count
    num_pairs = pair_ends[-1]

    # (4) Pair p -> its group (the first group whose pair range ends after p; empty groups have empty
    #     ranges and are skipped) -> its tile (offset of p inside that group's range). Slots past
    #     num_pairs repeat the last valid pair so a static-length consumer never reads out of range.
    p = jnp.minimum(jnp.arange(max_pairs, dtype=jnp.int32), num_pairs - 1)
    pair_group = jnp.searchsorted(pair_ends, p, side="right", method="compare_all").astype(jnp.int32)
    pair_tile = first_tile[pair_group] + (p - pair_starts[pair_group])

    # (5) Tile m -> its pair range. Its first row belongs to group lo, its last row to group hi (the group
    #     containing row r is the first one whose end exceeds r, which skips empty groups). Pair (m, lo) is
    #     the last of lo's pairs and pair (m, hi) the first of hi's; the groups in between sit wholly
    #     inside tile m with one pair each, so the tile's pairs are contiguous.
    tile_first_row = jnp.arange(num_tiles, dtype=jnp.int32) * tm
    tile_last_row = jnp.minimum(tile_first_row + tm, num_tokens) - 1
    lo = jnp.searchsorted(ends, tile_first_row, side="right", method="compare_all").astype(jnp.int32)
    hi = jnp.searchsorted(ends, tile_last_row, side="right", method="compare_all").astype(jnp.int32)
    m = jnp.arange(num_tiles, dtype=jnp.int32)
    tile_pair_start = pair_starts[lo] + (m - first_tile[lo])
    tile_pair_end = pair_starts[hi] + (m - first_tile[hi]) + 1

    return GroupMetadata(
        group_sizes_E=sizes,
        group_starts_E=starts,
        group_ends_E=ends,
        sort_idx_T=sort_idx_T.astype(jnp.int32),
        unsort_idx_T=unsort_idx_T.astype(jnp.int32),
        pair_tile_J=pair_tile,
        pair_group_J=pair_group,
        tile_pair_start_M=tile_pair_start,
        tile_pair_end_M=tile_pair_end,
        num_pairs=num_pairs,
        tile_m=tm,
    )


def make_group_metadata(
    expert_id_T, num_experts: int, *, tile_m: int = DEFAULT_TILE_M, check: bool = True
) -> GroupMetadata:
    """Sort tokens by expert once; the result serves every layer of one forward.

    Args:
      expert_id_T: int [T], the expert of each token (T >= 1, static under jit).
      num_experts: E (static).
      tile_m: rows per kernel tile, capped at the next power of two >= T (min 16). Pallas on GPU needs a
        power of two >= 16; the CPU path accepts any value.
      check: when the ids are traced, add a runtime check that they lie in [0, E) (concrete ids are
        always checked at trace time).
    Returns:
      GroupMetadata for rows sorted by expert (``sort_tokens`` applies the permutation).
    """
    expert_id_T = jnp.asarray(expert_id_T) if isinstance(expert_id_T, (list, tuple)) else expert_id_T
    _check_ids(expert_id_T, num_experts, check)
    ids = jnp.asarray(expert_id_T).astype(jnp.int32)
    sort_idx = jnp.argsort(ids, stable=True).astype(jnp.int32)
    # Inverse permutation by one scatter instead of a second argsort.
    unsort_idx = jnp.zeros_like(sort_idx).at[sort_idx].set(jnp.arange(ids.shape[0], dtype=jnp.int32))
    sizes = jnp.bincount(ids, length=num_experts).astype(jnp.int32)
    return _build(sizes, sort_idx, unsort_idx, tile_m)


def group_metadata_from_sizes(
    group_sizes_E, num_tokens: int, *, tile_m: int = DEFAULT_TILE_M, check: bool = True
) -> GroupMetadata:
    """Metadata for rows that are already sorted by expert (the ragged_dot contract); identity permutation.

    Sizes must be >= 0 and sum to ``num_tokens``: checked at trace time when concrete, else at run time
    (when ``check``).
    """
    group_sizes_E = jnp.asarray(group_sizes_E) if isinstance(group_sizes_E, (list, tuple)) else group_sizes_E
    _check_sizes(group_sizes_E, num_tokens, check)
    ident = jnp.arange(num_tokens, dtype=jnp.int32)
    return _build(jnp.asarray(group_sizes_E), ident, ident, tile_m)


@jax.custom_vjp
def _take_rows(x, idx, inv_idx):
    return jnp.take(x, idx, axis=0)


def _take_rows_fwd(x, idx, inv_idx):
    return jnp.take(x, idx, axis=0), (idx, inv_idx)


def _take_rows_bwd(res, dy):
    # The transpose of a permutation gather is the inverse gather (cheaper than XLA's scatter-add).
    idx, inv_idx = res
    return jnp.take(dy, inv_idx, axis=0), None, None


_take_rows.defvjp(_take_rows_fwd, _take_rows_bwd)


def sort_tokens(x_TD, meta: GroupMetadata):
    """Tokens in original order -> rows sorted by expert (the layout every grouped op takes)."""
    if x_TD.ndim < 1 or x_TD.shape[0] != meta.num_tokens:
        raise GmmInputError(f"x has shape {tuple(x_TD.shape)}; expected {meta.num_tokens} rows (tokens)")
    return _take_rows(x_TD, meta.sort_idx_T, meta.unsort_idx_T)


def unsort_tokens(y_TX, meta: GroupMetadata):
    """Rows sorted by expert -> tokens in original order (inverse of ``sort_tokens``)."""
    if y_TX.ndim < 1 or y_TX.shape[0] != meta.num_tokens:
        raise GmmInputError(f"y has shape {tuple(y_TX.shape)}; expected {meta.num_tokens} rows (tokens)")
    return _take_rows(y_TX, meta.unsort_idx_T, meta.sort_idx_T)
