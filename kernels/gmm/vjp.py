"""Custom VJPs for gmm and the SwiGLU expert MLP, written once over any backend.

A backend is any object with ``gmm(x, w, meta, transpose_rhs=...)``, ``tgmm(x, dy, meta)`` and
``mlp(x, wg, wu, wd, meta, save_preact=...)`` (see ``api.Backend``); the XLA loop and the Pallas kernels
both plug in here. pallas_call has no autodiff, and autodiff through the XLA loop would build a full
[E, I, O] weight cotangent per loop step, hence these rules.

  gmm:  y = x @ W[g]            dx = dy @ W[g].T   (gmm, transposed rhs)
                                dW[g] = x_g.T @ dy_g (tgmm)
  mlp:  a = x @ Wg, b = x @ Wu, h = silu(a) * b, y = h @ Wd
        dh = dy @ Wd.T,  dWd = tgmm(h, dy)
        da = dh * b * silu'(a),  db = dh * silu(a),  silu'(a) = s (1 + a (1 - s)) with s = sigmoid(a)
        dx = da @ Wg.T + db @ Wu.T,  dWg = tgmm(x, da),  dWu = tgmm(x, db)
The forward pass of the MLP saves the pre-activations a, b (in the input dtype) rather than recomputing
two matmuls in the backward pass. Elementwise math is fp32; matmuls accumulate in fp32.
"""

import functools

import jax
import jax.numpy as jnp

from kernels.gmm.reference import silu_glu


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def gmm_vjp(backend, x_TI, w_EIO, meta):
    return backend.gmm(x_TI, w_EIO, meta)


def _gmm_fwd(backend, x_TI, w_EIO, meta):
    return backend.gmm(x_TI, w_EIO, meta), (x_TI, w_EIO, meta)


def _gmm_bwd(backend, res, dy_TO):
    x_TI, w_EIO, meta = res
    dx = backend.gmm(dy_TO, w_EIO, meta, transpose_rhs=True)
    dw = backend.tgmm(x_TI, dy_TO, meta)
    return dx, dw, None  # the metadata is integer data: no cotangent


gmm_vjp.defvjp(_gmm_fwd, _gmm_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def expert_mlp_vjp(backend, x_TD, w_gate_EDX, w_up_EDX, w_down_EXD, meta):
    return backend.mlp(x_TD, w_gate_EDX, w_up_EDX, w_down_EXD, meta)


def _mlp_fwd(backend, x_TD, w_gate_EDX, w_up_EDX, w_down_EXD, meta):
    out, gate, up = backend.mlp(x_TD, w_gate_EDX, w_up_EDX, w_down_EXD, meta, save_preact=True)
    return out, (x_TD, w_gate_EDX, w_up_EDX, w_down_EXD, meta, gate, up)


def _mlp_bwd(backend, res, dy_TD):
    x_TD, w_gate_EDX, w_up_EDX, w_down_EXD, meta, gate, up = res
    dtype = x_TD.dtype
    h = silu_glu(gate, up, dtype)
    dh = backend.gmm(dy_TD, w_down_EXD, meta, transpose_rhs=True).astype(jnp.float32)
    dw_down = backend.tgmm(h, dy_TD, meta)
    a, b = gate.astype(jnp.float32), up.astype(jnp.float32)
    s = jax.nn.sigmoid(a)
    d_gate = (dh * b * s * (1 + a * (1 - s))).astype(dtype)
    d_up = (dh * a * s).astype(dtype)
    dx = backend.gmm(d_gate, w_gate_EDX, meta, transpose_rhs=True).astype(jnp.float32)
    dx = dx + backend.gmm(d_up, w_up_EDX, meta, transpose_rhs=True).astype(jnp.float32)
    dw_gate = backend.tgmm(x_TD, d_gate, meta)
    dw_up = backend.tgmm(x_TD, d_up, meta)
    return dx.astype(dtype), dw_gate, dw_up, dw_down, None


expert_mlp_vjp.defvjp(_mlp_fwd, _mlp_bwd)
