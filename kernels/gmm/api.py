"""Public entry points: gmm, tgmm and expert_mlp, each behind ``implementation=``.

  None               the best available for the default backend: "xla" on CPU and GPU (it computes only each
                     row's own expert; XLA may lower ragged_dot on a GPU to a dense product over all experts)
                     until the Pallas kernel is validated on a GPU; anything else -> "reference". Each
                     fallback is logged (once per trace).
  "reference"        jax.lax.ragged_dot, plain autodiff; the oracle, runs everywhere.
  "xla"              the CPU formulation (xla.py), custom VJP.
  "pallas_gpu"       the Pallas kernels compiled for the GPU (Triton lowering), custom VJP.
  "pallas_interpret" the same kernel bodies in Pallas interpret mode (any backend; slow; for tests).

A named implementation that cannot run raises ImplementationUnavailableError saying why; only None falls
back. Inputs are checked at trace time (kernels/gmm/checks.py). All ops take rows sorted by expert: see
``sort_tokens`` / ``unsort_tokens`` and ``moe_mlp`` for the token-order wrapper.
"""

import dataclasses
import logging

import jax

from kernels.gmm import checks, pallas, reference, vjp, xla
from kernels.gmm.checks import GmmInputError, ImplementationUnavailableError
from kernels.gmm.metadata import GroupMetadata

logger = logging.getLogger(__name__)

IMPLEMENTATIONS = ("reference", "xla", "pallas_gpu", "pallas_interpret")
# The Pallas GPU kernel has only run in interpret mode so far: until it is validated and measured on a GPU
# (docs/benchmarks.md, scripts/gpu_check.sh), None on a GPU means the XLA loop, which computes only the routed
# experts (ragged_dot may become E times the FLOPs there); ask for "pallas_gpu" explicitly to try it.
_DEFAULT_ORDER = {"gpu": ("xla",), "cpu": ("xla",)}


@dataclasses.dataclass(frozen=True)
class Backend:
    """A custom-VJP backend: the XLA loop or the Pallas kernels (compiled or interpreted)."""

    kind: str  # "xla" or "pallas"
    block_sizes: pallas.BlockSizes = pallas.BlockSizes()
    interpret: bool = False

    def _kw(self):
        return {} if self.kind == "xla" else dict(block_sizes=self.block_sizes, interpret=self.interpret)

    def gmm(self, x, w, meta, transpose_rhs=False):
        fn = xla.gmm_xla if self.kind == "xla" else pallas.gmm_pallas
        return fn(x, w, meta, transpose_rhs=transpose_rhs, **self._kw())

    def tgmm(self, x, dy, meta):
        fn = xla.tgmm_xla if self.kind == "xla" else pallas.tgmm_pallas
        return fn(x, dy, meta, **self._kw())

    def mlp(self, x, wg, wu, wd, meta, save_preact=False):
        fn = xla.expert_mlp_xla if self.kind == "xla" else pallas.expert_mlp_pallas
        return fn(x, wg, wu, wd, meta, save_preact=save_preact, **self._kw())


def _unavailable_reason(name: str, meta: GroupMetadata, dims) -> str | None:
    if name == "pallas_gpu":
        return pallas.gpu_unavailable_reason(meta.tile_m, dims)
    return None


def resolve_implementation(implementation: str | None, meta: GroupMetadata, dims=()) -> str:
    """The implementation that will run for these inputs (``dims``: every matmul dim, for GPU checks)."""
    if implementation is not None:
        if implementation not in IMPLEMENTATIONS:
            raise GmmInputError(f"unknown implementation {implementation!r}; choose one of {IMPLEMENTATIONS} or None")
        reason = _unavailable_reason(implementation, meta, dims)
        if reason is not None:
            raise ImplementationUnavailableError(f"implementation={implementation!r} cannot run: {reason}")
        return implementation
    for name in _DEFAULT_ORDER.get(jax.default_backend(), ("reference",)):
        reason = _unavailable_reason(name, meta, dims)
        if reason is None:
            return name
        logger.warning("kernels.gmm: %s is unavailable (%s); falling back", name, reason)
    return "reference"


def _backend(name: str, block_sizes) -> Backend:
    if name == "xla":
        return Backend("xla")
    return Backend("pallas", block_sizes or pallas.BlockSizes(), interpret=(name == "pallas_interpret"))


def gmm(x_TI, w_EIO, meta: GroupMetadata, *, implementation: str | None = None,
        block_sizes: pallas.BlockSizes | None = None):
    """Grouped matmul: out[r] = x[r] @ w[group(r)], rows sorted by expert.

    Args:
      x_TI: [T, I] fp32 or bf16, rows sorted by expert (``sort_tokens``).
      w_EIO: [E, I, O], same dtype (e.g. [E, D, X] for gate/up or [E, X, D] for down).
      meta: from ``make_group_metadata`` / ``group_metadata_from_sizes`` for these T tokens.
      implementation: None | "reference" | "xla" | "pallas_gpu" | "pallas_interpret".
      block_sizes: Pallas tile sizes (ignored by the other implementations).
    Returns:
      [T, O] in the input dtype (fp32 accumulation). Differentiable in x and w.
    """
    checks.check_gmm_args(x_TI, w_EIO, meta)
    name = resolve_implementation(implementation, meta, (*w_EIO.shape[1:],))
    if name == "reference":
        return reference.gmm_reference(x_TI, w_EIO, meta)
    return vjp.gmm_vjp(_backend(name, block_sizes), x_TI, w_EIO, meta)


def tgmm(x_TI, dy_TO, meta: GroupMetadata, *, implementation: str | None = None,
         block_sizes: pallas.BlockSizes | None = None):
    """Per-group x.T @ dy -> [E, I, O] (the weight gradient of gmm); empty groups give zeros. No VJP."""
    checks.check_tgmm_args(x_TI, dy_TO, meta)
    name = resolve_implementation(implementation, meta, (x_TI.shape[1], dy_TO.shape[1]))
    if name == "reference":
        return reference.tgmm_reference(x_TI, dy_TO, meta)
    return _backend(name, block_sizes).tgmm(x_TI, dy_TO, meta)


def expert_mlp(x_TD, w_gate_EDX, w_up_EDX, w_down_EXD, meta: GroupMetadata, *,
               implementation: str | None = None, block_sizes: pallas.BlockSizes | None = None):
    """SwiGLU expert MLP by group: (silu(x @ Wg[e]) * (x @ Wu[e])) @ Wd[e], rows sorted by expert.

    Args:
      x_TD: [T, D] fp32 or bf16, rows sorted by expert (``sort_tokens``).
      w_gate_EDX, w_up_EDX: [E, D, X]; w_down_EXD: [E, X, D]; all in the dtype of x_TD.
      meta: the group metadata for these T tokens (built once per forward, shared by all layers).
      implementation, block_sizes: as for ``gmm``.
    Returns:
      [T, D] in the input dtype; the activation is computed in fp32 and cast to the input dtype before
      the down projection. Differentiable in x and all three weights.
    """
    checks.check_mlp_args(x_TD, w_gate_EDX, w_up_EDX, w_down_EXD, meta)
    name = resolve_implementation(implementation, meta, (x_TD.shape[1], w_gate_EDX.shape[2]))
    if name == "reference":
        return reference.expert_mlp_reference(x_TD, w_gate_EDX, w_up_EDX, w_down_EXD, meta)
    return vjp.expert_mlp_vjp(_backend(name, block_sizes), x_TD, w_gate_EDX, w_up_EDX, w_down_EXD, meta)
