"""Helpers for the kernel tests, as one session fixture (test modules here are not importable packages).

Shapes stay tiny (T <= 48, D, X <= 48, E <= 6): the whole kernels suite must stay fast on 2 CPU cores.
"""

import types

import numpy as np
import jax.numpy as jnp
import pytest

# Max abs error relative to the largest reference magnitude. fp32 kernels differ from ragged_dot only by
# summation order; bf16 ones also by where values are rounded to bf16.
TOL = {"float32": 2e-5, "bfloat16": 3e-2}


def assert_close(got, want, dtype, what=""):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    scale = max(float(np.max(np.abs(want))), 1e-6)
    err = float(np.max(np.abs(got - want))) / scale
    tol = TOL[jnp.dtype(dtype).name]
    assert err <= tol, f"{what} ({jnp.dtype(dtype).name}): max abs diff / max |ref| = {err:.3g} > {tol:g}"


def random_weights(rng, shape, dtype):
    """Normal weights scaled by 1/sqrt(fan_in) so activations stay O(1)."""
    return jnp.asarray(rng.standard_normal(shape, np.float32) / np.sqrt(shape[-2]), dtype)


def random_tokens(rng, shape, dtype):
    return jnp.asarray(rng.standard_normal(shape, np.float32), dtype)


@pytest.fixture(scope="session")
def util():
    return types.SimpleNamespace(assert_close=assert_close, random_weights=random_weights,
                                 random_tokens=random_tokens)
