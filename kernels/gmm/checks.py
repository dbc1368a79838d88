"""Trace-time validation shared by every implementation, and the two error types.

Shapes and dtypes are always static under jit, so every mismatch is reported while tracing. Group sizes
and expert ids are data: they are checked at trace time when they are concrete (numpy or an eager jax
array) and, when traced, by a runtime check (``runtime_check``) that raises on the host before a wrong
result can be used.
"""

import numpy as np
import jax
import jax.numpy as jnp

from kernels.errors import ReadmeJaxError

SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


class GmmInputError(ReadmeJaxError, ValueError):
    """Bad input to a grouped-matmul op (shape, dtype, group sizes, expert ids)."""


class ImplementationUnavailableError(ReadmeJaxError, RuntimeError):
    """A named implementation cannot run here (wrong backend, missing module, unsupported shape)."""


def concrete_or_none(a):
    """The value of ``a`` as numpy when it is known at trace time, else None."""
    try:
        return np.asarray(a)
    except Exception:  # a tracer (jit, grad, vmap) refuses conversion: its value is unknown until run time
        return None


def _raise_if_false(ok, message):
    if not bool(ok):
        raise GmmInputError(message)


def runtime_check(ok, message: str) -> None:
    """Raise GmmInputError(message) on the host when the traced boolean ``ok`` is False."""
    jax.debug.callback(lambda v: _raise_if_false(v, message), ok)


def check_dtype(name: str, a, dtype=None) -> None:
    """``a`` must be fp32 or bf16 and, when given, equal to ``dtype``."""
    if jnp.dtype(a.dtype) not in SUPPORTED_DTYPES:
        raise GmmInputError(f"{name} has dtype {a.dtype}; supported: float32, bfloat16")
    if dtype is not None and jnp.dtype(a.dtype) != jnp.dtype(dtype):
        raise GmmInputError(f"{name} has dtype {a.dtype} but the tokens have dtype {dtype}; cast one of them")


def check_rank(name: str, a, rank: int, letters: str) -> None:
    if a.ndim != rank:
        raise GmmInputError(f"{name} must have shape [{', '.join(letters)}], got shape {tuple(a.shape)}")


def check_tokens(x, meta, name: str = "x_TD", letters: str = "TD") -> None:
    """Tokens are [T, width] with T equal to the metadata's token count."""
    check_rank(name, x, 2, letters)
    check_dtype(name, x)
    if x.shape[0] != meta.num_tokens:
        raise GmmInputError(
            f"{name} has {x.shape[0]} rows but the group metadata was built for {meta.num_tokens} tokens"
        )


def check_gmm_args(x_TI, w_EIO, meta, *, transpose_rhs: bool = False) -> None:
    """x[T, I] @ w[E, I, O] (or w[E, O, I] transposed) by group."""
    check_tokens(x_TI, meta, "x_TI", "TI")
    check_rank("w_EIO", w_EIO, 3, "EIO")
    check_dtype("w_EIO", w_EIO, x_TI.dtype)
    if w_EIO.shape[0] != meta.num_experts:
        raise GmmInputError(
            f"w_EIO has {w_EIO.shape[0]} experts but the group metadata has {meta.num_experts}"
        )
    width_in = w_EIO.shape[2] if transpose_rhs else w_EIO.shape[1]
    if x_TI.shape[1] != width_in:
        raise GmmInputError(
            f"x_TI has width {x_TI.shape[1]} but w_EIO{' (transposed)' if transpose_rhs else ''} "
            f"expects {width_in} (w_EIO shape {tuple(w_EIO.shape)})"
        )


def check_tgmm_args(x_TI, dy_TO, meta) -> None:
    """Per-group x^T @ dy: both [T, .] with the same dtype."""
    check_tokens(x_TI, meta, "x_TI", "TI")
    check_tokens(dy_TO, meta, "dy_TO", "TO")
    check_dtype("dy_TO", dy_TO, x_TI.dtype)


def check_mlp_args(x_TD, w_gate_EDX, w_up_EDX, w_down_EXD, meta) -> None:
    """SwiGLU expert weights: gate and up [E, D, X], down [E, X, D]."""
    check_tokens(x_TD, meta)
    for name, w in (("w_gate_EDX", w_gate_EDX), ("w_up_EDX", w_up_EDX), ("w_down_EXD", w_down_EXD)):
        check_rank(name, w, 3, "EXD" if name == "w_down_EXD" else "EDX")
        check_dtype(name, w, x_TD.dtype)
    e, d = meta.num_experts, x_TD.shape[1]
    x = w_gate_EDX.shape[2]
    want = {"w_gate_EDX": (e, d, x), "w_up_EDX": (e, d, x), "w_down_EXD": (e, x, d)}
    for name, w in (("w_gate_EDX", w_gate_EDX), ("w_up_EDX", w_up_EDX), ("w_down_EXD", w_down_EXD)):
        if tuple(w.shape) != want[name]:
            raise GmmInputError(
                f"{name} has shape {tuple(w.shape)}; expected {want[name]} for E={e} experts, "
                f"D={d} (from x_TD) and X={x} (from w_gate_EDX)"
            )
