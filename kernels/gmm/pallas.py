"""Pallas kernels for the grouped ops: gmm, tgmm (weight gradient) and the fused SwiGLU gate/up.

One kernel body serves two modes: compiled for the GPU through the Pallas Triton lowering
(``interpret=False``), and run on any backend by Pallas' interpret mode (``interpret=True``), which is how
the CPU tests exercise exactly the code the H100 runs.

Why the Triton lowering rather than Mosaic GPU (jax >= 0.11 deprecates the Triton backend): the Triton
flavour is written with the portable ``pl.pallas_call`` grid + BlockSpec model, so its body runs under the
public interpret mode on CPU; a Mosaic GPU kernel (``plgpu.kernel``, WGMMA, TMA barriers) can only be
interpreted through a private module in jax 0.10.2, and no GPU was lent to this issue to tune one blind.
jax's own Mosaic GPU ``ragged_dot_mgpu`` is measured beside ours by ``kernels.bench``; if it wins on the
H100, a Mosaic variant belongs in a sibling file behind the same API.

Letters: x is [T, I] and W[group] is [I, O] (I = contraction width, O = output width); M = row tiles,
J = (tile, group) pairs (kernels/gmm/metadata.py).

Grid and data flow (gmm; glu is the same with two weights and the activation):
  1. program (m, o) owns output tile rows [m*tile_m, (m+1)*tile_m) x columns [o*block_o, (o+1)*block_o);
  2. it loops over the (tile, group) pairs of tile m (``meta.tile_pair_start_M/end_M``), usually one,
     two or more where group boundaries fall inside the tile;
  3. per pair: fp32 accumulation over I in steps of block_i against W[group], then a select keeps the
     rows of that group;
  4. one unmasked store of the tile. Programs never share output rows, so there are no races and no
     masked stores.
tgmm: program (e, i, o) owns dW[e] block (i, o) and loops over the row tiles that group e touches,
zeroing the other groups' rows. Rows are padded to whole tiles so every load is in bounds; on GPU every
loaded block must have power-of-two sides (Triton).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels.gmm.checks import ImplementationUnavailableError
from kernels.gmm.reference import precision_for, silu_glu

try:  # the Triton backend is deprecated from jax 0.11 and may be removed later
    from jax.experimental.pallas import triton as _pltriton

    _TRITON_IMPORT_ERROR = None
except ImportError as e:  # pragma: no cover - depends on the jax version
    _pltriton = None
    _TRITON_IMPORT_ERROR = e


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes besides the metadata's tile_m; on GPU, powers of two >= 16 (shrunk to fit each dim).

    I and O are the input (contraction) and output widths of one grouped matmul (README "Dimension key").
    """

    block_o: int = 128  # output columns per program (gmm) / dW columns (tgmm)
    block_i: int = 64  # contraction step (gmm, glu) / dW rows (tgmm)
    glu_block_o: int = 64  # glu keeps three fp32 [tile_m, block] accumulators live, so a narrower tile
    num_warps: int = 4
    num_stages: int = 3


def fit_block(dim: int, preferred: int, *, gpu: bool) -> int:
    """Largest power of two <= preferred that divides dim (Triton needs power-of-two blocks >= 16)."""
    b = 1 << (max(int(preferred), 1).bit_length() - 1)
    while b > 1 and dim % b:
        b //= 2
    if gpu and b < 16:
        raise ImplementationUnavailableError(
            f"pallas_gpu needs every matmul dim to be a multiple of 16; got {dim} "
            f"(pad the model width or use implementation='xla' / 'reference')"
        )
    return b


def gpu_unavailable_reason(tile_m: int, dims) -> str | None:
    """Why the compiled kernel cannot run here (None when it can)."""
    if _pltriton is None:
        return f"jax {jax.__version__} has no Pallas Triton backend ({_TRITON_IMPORT_ERROR})"
    if jax.default_backend() != "gpu":
        return (
            f"pallas_gpu needs a GPU backend, the default backend is {jax.default_backend()!r} "
            "(use implementation='pallas_interpret' to run the kernel body here)"
        )
    if tile_m < 16 or tile_m & (tile_m - 1):
        return f"pallas_gpu needs tile_m to be a power of two >= 16, got {tile_m}"
    bad = [d for d in dims if d % 16]
    if bad:
        return f"pallas_gpu needs matmul dims that are multiples of 16, got {bad}"
    return None


def _compiler_params(bs: BlockSizes, interpret: bool):
    if interpret:
        return None
    return _pltriton.CompilerParams(num_warps=bs.num_warps, num_stages=bs.num_stages)


def _pad_rows(a, rows: int):
    return a if a.shape[0] == rows else jnp.pad(a, ((0, rows - a.shape[0]), (0, 0)))


def _dot(a, b, dims=(((1,), (0,)), ((), ()))):
    return lax.dot_general(a, b, dims, precision=precision_for(a.dtype), preferred_element_type=jnp.float32)


def _row_keep(rows, starts_ref, ends_ref, g):
    return ((rows >= starts_ref[g]) & (rows < ends_ref[g]))[:, None]


def _gmm_kernel(tile_start_ref, tile_end_ref, pair_group_ref, starts_ref, ends_ref, x_ref, w_ref, o_ref, *,
                tile_m, block_o, block_i, num_i, transpose_rhs):
    m, o = pl.program_id(0), pl.program_id(1)
    rows = m * tile_m + lax.broadcasted_iota(jnp.int32, (tile_m,), 0)
    cols = pl.ds(o * block_o, block_o)

    def pair(j, acc):
        g = pair_group_ref[j]

        def i_step(i, a):
            x = x_ref[pl.ds(m * tile_m, tile_m), pl.ds(i * block_i, block_i)]
            if transpose_rhs:  # w is [E, O, I]: contract both operands on their last dim
                return a + _dot(x, w_ref[g, cols, pl.ds(i * block_i, block_i)], (((1,), (1,)), ((), ())))
            return a + _dot(x, w_ref[g, pl.ds(i * block_i, block_i), cols])

        y = lax.fori_loop(0, num_i, i_step, jnp.zeros((tile_m, block_o), jnp.float32))
        return jnp.where(_row_keep(rows, starts_ref, ends_ref, g), y, acc)

    acc = lax.fori_loop(tile_start_ref[m], tile_end_ref[m], pair, jnp.zeros((tile_m, block_o), jnp.float32))
    o_ref[...] = acc.astype(o_ref.dtype)


def _glu_kernel(tile_start_ref, tile_end_ref, pair_group_ref, starts_ref, ends_ref, x_ref, wg_ref, wu_ref,
                *out_refs, tile_m, block_o, block_i, num_i, emit_preact):
    m, o = pl.program_id(0), pl.program_id(1)
    rows = m * tile_m + lax.broadcasted_iota(jnp.int32, (tile_m,), 0)
    cols = pl.ds(o * block_o, block_o)

    def pair(j, accs):
        g = pair_group_ref[j]

        def i_step(i, gu):
            ii = pl.ds(i * block_i, block_i)
            x = x_ref[pl.ds(m * tile_m, tile_m), ii]  # shared by gate and up
            return gu[0] + _dot(x, wg_ref[g, ii, cols]), gu[1] + _dot(x, wu_ref[g, ii, cols])

        zeros = jnp.zeros((tile_m, block_o), jnp.float32)
        gate, up = lax.fori_loop(0, num_i, i_step, (zeros, zeros))
        keep = _row_keep(rows, starts_ref, ends_ref, g)
        if emit_preact:
            return jnp.where(keep, gate, accs[0]), jnp.where(keep, up, accs[1])
        return (jnp.where(keep, gate * jax.nn.sigmoid(gate) * up, accs[0]),)

    init = tuple(jnp.zeros((tile_m, block_o), jnp.float32) for _ in out_refs)
    accs = lax.fori_loop(tile_start_ref[m], tile_end_ref[m], pair, init)
    for ref, acc in zip(out_refs, accs):
        ref[...] = acc.astype(ref.dtype)


def _tgmm_kernel(starts_ref, ends_ref, x_ref, dy_ref, o_ref, *, tile_m, block_i, block_o):
    g, i, o = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    start, end = starts_ref[g], ends_ref[g]
    first = start // tile_m
    stop = jnp.where(end > start, (end - 1) // tile_m + 1, first)  # an empty group visits no tile

    def tile(t, acc):
        rows = t * tile_m + lax.broadcasted_iota(jnp.int32, (tile_m,), 0)
        keep = ((rows >= start) & (rows < end))[:, None]
        x = jnp.where(keep, x_ref[pl.ds(t * tile_m, tile_m), pl.ds(i * block_i, block_i)], 0)
        dy = jnp.where(keep, dy_ref[pl.ds(t * tile_m, tile_m), pl.ds(o * block_o, block_o)], 0)
        return acc + _dot(x, dy, (((0,), (0,)), ((), ())))

    acc = lax.fori_loop(first, stop, tile, jnp.zeros((block_i, block_o), jnp.float32))
    o_ref[...] = acc.astype(o_ref.dtype)


def _meta_args(meta):
    return (meta.tile_pair_start_M, meta.tile_pair_end_M, meta.pair_group_J, meta.group_starts_E,
            meta.group_ends_E)


@functools.partial(jax.jit, static_argnames=("transpose_rhs", "block_sizes", "interpret"))
def gmm_pallas(x_TI, w_EIO, meta, *, transpose_rhs: bool = False, block_sizes: BlockSizes = BlockSizes(),
               interpret: bool = False):
    """out[r] = x[r] @ w[group(r)] (or w[group(r)].T); rows sorted by expert."""
    tm, rows = meta.tile_m, meta.padded_rows
    width_in = x_TI.shape[1]
    width_out = w_EIO.shape[1] if transpose_rhs else w_EIO.shape[2]
    bo = fit_block(width_out, block_sizes.block_o, gpu=not interpret)
    bi = fit_block(width_in, block_sizes.block_i, gpu=not interpret)
    kernel = functools.partial(_gmm_kernel, tile_m=tm, block_o=bo, block_i=bi, num_i=width_in // bi,
                               transpose_rhs=transpose_rhs)
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((rows, width_out), x_TI.dtype),
        grid=(meta.num_tiles, width_out // bo),
        in_specs=[pl.no_block_spec] * 7,
        out_specs=pl.BlockSpec((tm, bo), lambda m, o: (m, o)),
        interpret=interpret,
        compiler_params=_compiler_params(block_sizes, interpret),
        name="readme_gmm",
    )(*_meta_args(meta), _pad_rows(x_TI, rows), w_EIO)
    return out[: meta.num_tokens]


@functools.partial(jax.jit, static_argnames=("emit_preact", "block_sizes", "interpret"))
def glu_pallas(x_TD, w_gate_EDX, w_up_EDX, meta, *, emit_preact: bool = False,
               block_sizes: BlockSizes = BlockSizes(), interpret: bool = False):
    """silu(x @ Wg[e]) * (x @ Wu[e]) in one pass over x -> h [T, X]; or (gate, up) with ``emit_preact``."""
    tm, rows = meta.tile_m, meta.padded_rows
    D, X = x_TD.shape[1], w_gate_EDX.shape[2]
    bo = fit_block(X, block_sizes.glu_block_o, gpu=not interpret)
    bi = fit_block(D, block_sizes.block_i, gpu=not interpret)
    kernel = functools.partial(_glu_kernel, tile_m=tm, block_o=bo, block_i=bi, num_i=D // bi,
                               emit_preact=emit_preact)
    num_out = 2 if emit_preact else 1
    outs = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct((rows, X), x_TD.dtype)] * num_out,
        grid=(meta.num_tiles, X // bo),
        in_specs=[pl.no_block_spec] * 8,
        out_specs=[pl.BlockSpec((tm, bo), lambda m, o: (m, o))] * num_out,
        interpret=interpret,
        compiler_params=_compiler_params(block_sizes, interpret),
        name="readme_glu",
    )(*_meta_args(meta), _pad_rows(x_TD, rows), w_gate_EDX, w_up_EDX)
    outs = tuple(out[: meta.num_tokens] for out in outs)
    return outs if emit_preact else outs[0]


@functools.partial(jax.jit, static_argnames=("block_sizes", "interpret"))
def tgmm_pallas(x_TI, dy_TO, meta, *, block_sizes: BlockSizes = BlockSizes(), interpret: bool = False):
    """dW[e] = x[rows of e].T @ dy[rows of e] -> [E, I, O] in the input dtype; empty groups give zeros."""
    tm, rows = meta.tile_m, meta.padded_rows
    width_in, width_out = x_TI.shape[1], dy_TO.shape[1]
    bi = fit_block(width_in, block_sizes.block_i, gpu=not interpret)
    bo = fit_block(width_out, block_sizes.block_o, gpu=not interpret)
    kernel = functools.partial(_tgmm_kernel, tile_m=tm, block_i=bi, block_o=bo)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((meta.num_experts, width_in, width_out), x_TI.dtype),
        grid=(meta.num_experts, width_in // bi, width_out // bo),
        in_specs=[pl.no_block_spec] * 4,
        out_specs=pl.BlockSpec((None, bi, bo), lambda g, i, o: (g, i, o)),
        interpret=interpret,
        compiler_params=_compiler_params(block_sizes, interpret),
        name="readme_tgmm",
    )(meta.group_starts_E, meta.group_ends_E, _pad_rows(x_TI, rows), _pad_rows(dy_TO, rows))


def expert_mlp_pallas(x_TD, w_gate_EDX, w_up_EDX, w_down_EXD, meta, *, save_preact: bool = False,
                      block_sizes: BlockSizes = BlockSizes(), interpret: bool = False):
    """Fused gate/up + activation kernel, then the down gmm; optionally also the pre-activations."""
    kw = dict(block_sizes=block_sizes, interpret=interpret)
    if save_preact:
        gate, up = glu_pallas(x_TD, w_gate_EDX, w_up_EDX, meta, emit_preact=True, **kw)
        out = gmm_pallas(silu_glu(gate, up, x_TD.dtype), w_down_EXD, meta, **kw)
        return out, gate, up
    h = glu_pallas(x_TD, w_gate_EDX, w_up_EDX, meta, **kw)
    return gmm_pallas(h, w_down_EXD, meta, **kw)
