"""The oracle: obvious implementations built on jax.lax.ragged_dot (and a per-token gather for MoE).

Every other implementation is tested against these, values and gradients (plain jax autodiff here, no
custom VJP). They run on every backend; on CPU ragged_dot is slow (stack.md §4), so they are for tests and
as the last fallback, not for speed.

All ops take rows sorted by expert (``sort_tokens``); fp32 accumulation, outputs in the input dtype.
"""

import jax
import jax.numpy as jnp
from jax import lax


def precision_for(dtype):
    """Full fp32 precision for fp32 inputs (no TF32 on GPU); bf16 already is the precision asked for."""
    return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else lax.Precision.DEFAULT


def silu_glu(g, u, dtype):
    """SwiGLU activation silu(g) * u in fp32, cast to the activation dtype before the down projection."""
    g = g.astype(jnp.float32)
    return (g * jax.nn.sigmoid(g) * u.astype(jnp.float32)).astype(dtype)


def gmm_reference(x_TI, w_EIO, meta, *, transpose_rhs: bool = False):
    """out[r] = x[r] @ w[group(r)] (or @ w[group(r)].T); rows sorted by expert."""
    w = jnp.swapaxes(w_EIO, 1, 2) if transpose_rhs else w_EIO
    out = lax.ragged_dot(
        x_TI, w, meta.group_sizes_E, precision=precision_for(x_TI.dtype), preferred_element_type=jnp.float32
    )
    return out.astype(x_TI.dtype)


def tgmm_reference(x_TI, dy_TO, meta):
    """dW[e] = x[rows of e].T @ dy[rows of e]; the weight gradient of gmm, taken by autodiff of ragged_dot."""
    w0_EIO = jnp.zeros((meta.num_experts, x_TI.shape[1], dy_TO.shape[1]), x_TI.dtype)

    def f(w_EIO):
        return lax.ragged_dot(
            x_TI, w_EIO, meta.group_sizes_E, precision=precision_for(x_TI.dtype), preferred_element_type=jnp.float32
        )

    _, vjp = jax.vjp(f, w0_EIO)
    (dw_EIO,) = vjp(dy_TO.astype(jnp.float32))
    return dw_EIO.astype(x_TI.dtype)


def expert_mlp_reference(x_TD, w_gate_EDX, w_up_EDX, w_down_EXD, meta):
    """SwiGLU per expert: (silu(x @ Wg[e]) * (x @ Wu[e])) @ Wd[e]; rows sorted by expert."""
    kw = dict(precision=precision_for(x_TD.dtype), preferred_element_type=jnp.float32)
    g = lax.ragged_dot(x_TD, w_gate_EDX, meta.group_sizes_E, **kw)
    u = lax.ragged_dot(x_TD, w_up_EDX, meta.group_sizes_E, **kw)
    h = silu_glu(g, u, x_TD.dtype)
    return lax.ragged_dot(h, w_down_EXD, meta.group_sizes_E, **kw).astype(x_TD.dtype)


def moe_mlp_reference(x_BLD, expert_id_BL, w_gate_EDX, w_up_EDX, w_down_EXD):
    """Per-token gather of each token's expert weights, then einsums; no sorting at all (tests only)."""
    kw = dict(precision=precision_for(x_BLD.dtype), preferred_element_type=jnp.float32)
    g = jnp.einsum("BLD,BLDX->BLX", x_BLD, w_gate_EDX[expert_id_BL], **kw)
    u = jnp.einsum("BLD,BLDX->BLX", x_BLD, w_up_EDX[expert_id_BL], **kw)
    h = silu_glu(g, u, x_BLD.dtype)
    return jnp.einsum("BLX,BLXD->BLD", h, w_down_EXD[expert_id_BL], **kw).astype(x_BLD.dtype)
