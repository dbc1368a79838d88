"""The MoE MLP call site for Read-ME: tokens in sequence order in, tokens in sequence order out.

Read-ME's router picks one expert per token before the decoder runs, and that expert serves the token in
every layer. So a forward pass does:
  1. meta = make_moe_metadata(expert_id_BL, E)             once per forward (sort, sizes, tile maps);
  2. per layer: y_BLD = moe_mlp(x_BLD, w_gate_EDX, w_up_EDX, w_down_EXD, meta)
     = unsort(expert_mlp(sort(x), ...)), i.e. one gather in, the fused expert MLP, one gather out.
"""

from kernels.gmm.api import expert_mlp
from kernels.gmm.checks import GmmInputError
from kernels.gmm.metadata import DEFAULT_TILE_M, GroupMetadata, make_group_metadata, sort_tokens, unsort_tokens


def make_moe_metadata(expert_id_BL, num_experts: int, *, tile_m: int = DEFAULT_TILE_M,
                      check: bool = True) -> GroupMetadata:
    """Group metadata for a [B, L] batch; tokens are flattened row-major (T = B * L)."""
    if expert_id_BL.ndim != 2:
        raise GmmInputError(f"expert_id_BL must be [B, L], got shape {tuple(expert_id_BL.shape)}")
    return make_group_metadata(expert_id_BL.reshape(-1), num_experts, tile_m=tile_m, check=check)


def moe_mlp(x_BLD, w_gate_EDX, w_up_EDX, w_down_EXD, meta: GroupMetadata, *,
            implementation: str | None = None, block_sizes=None):
    """Each token through its own expert's SwiGLU MLP; x_BLD and the result are in sequence order.

    Args:
      x_BLD: [B, L, D] fp32 or bf16.
      w_gate_EDX, w_up_EDX: [E, D, X]; w_down_EXD: [E, X, D].
      meta: ``make_moe_metadata(expert_id_BL, E)`` for this batch (reuse it in every layer).
      implementation, block_sizes: see ``kernels.gmm.expert_mlp``.
    Returns:
      [B, L, D] in the input dtype.
    """
    if x_BLD.ndim != 3:
        raise GmmInputError(f"x_BLD must be [B, L, D], got shape {tuple(x_BLD.shape)}")
    b, l, d = x_BLD.shape
    if b * l != meta.num_tokens:
        raise GmmInputError(f"x_BLD has B*L = {b * l} tokens but the metadata was built for {meta.num_tokens}")
    x_TD = sort_tokens(x_BLD.reshape(b * l, d), meta)
    y_TD = expert_mlp(x_TD, w_gate_EDX, w_up_EDX, w_down_EXD, meta,
                      implementation=implementation, block_sizes=block_sizes)
    return unsort_tokens(y_TD, meta).reshape(b, l, d)
