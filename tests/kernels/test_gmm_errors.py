"""Bad input gives a clear error at trace time (or, for traced data, at run time), never a wrong result."""

import logging

import numpy as np
import jax
import jax.numpy as jnp
import pytest

import kernels
from kernels.gmm import GmmInputError, ImplementationUnavailableError, api, pallas
from kernels.gmm import expert_mlp, gmm, group_metadata_from_sizes, make_group_metadata, resolve_implementation
from readme_jax.errors import ReadmeJaxError

T, D, X, E = 12, 16, 32, 3
META = group_metadata_from_sizes(np.array([5, 0, 7]), T, tile_m=4)
spec = jax.ShapeDtypeStruct  # shapes and dtypes only: nothing is computed


def _trace(fn, *args):
    """Trace only (jax.eval_shape): an error raised here is a trace-time error."""
    return jax.eval_shape(fn, *args)


def test_error_types_are_project_errors():
    assert issubclass(GmmInputError, ReadmeJaxError) and issubclass(GmmInputError, ValueError)
    assert issubclass(ImplementationUnavailableError, ReadmeJaxError)


@pytest.mark.parametrize("x,w,match", [
    (spec((T, D + 1), jnp.float32), spec((E, D, X), jnp.float32), "width 17"),
    (spec((T + 1, D), jnp.float32), spec((E, D, X), jnp.float32), "13 rows"),
    (spec((T, D), jnp.float32), spec((E + 1, D, X), jnp.float32), "4 experts"),
    (spec((T, D), jnp.float32), spec((E, D, X), jnp.bfloat16), "dtype bfloat16"),
    (spec((T, D), jnp.float16), spec((E, D, X), jnp.float16), "supported: float32, bfloat16"),
    (spec((T, D), jnp.float32), spec((D, X), jnp.float32), r"shape \[E, I, O\]"),
])
@pytest.mark.parametrize("impl", [None, "reference", "xla", "pallas_interpret"])
def test_gmm_shape_and_dtype_errors(x, w, match, impl):
    with pytest.raises(GmmInputError, match=match):
        _trace(lambda x, w: gmm(x, w, META, implementation=impl), x, w)


def test_expert_mlp_weight_shape_errors():
    x = spec((T, D), jnp.float32)
    wg, wd = spec((E, D, X), jnp.float32), spec((E, X, D), jnp.float32)
    with pytest.raises(GmmInputError, match=r"w_up_EDX has shape \(3, 16, 16\)"):
        _trace(lambda *a: expert_mlp(*a, META), x, wg, spec((E, D, 16), jnp.float32), wd)
    with pytest.raises(GmmInputError, match="w_down_EXD has shape"):
        _trace(lambda *a: expert_mlp(*a, META), x, wg, wg, wg)


@pytest.mark.parametrize("sizes,match", [([5, 0, 6], "sum to 11 but there are 12 tokens"),
                                         ([5, -1, 8], "must be >= 0")])
def test_concrete_bad_group_sizes_fail_at_trace_time(sizes, match):
    with pytest.raises(GmmInputError, match=match):
        group_metadata_from_sizes(np.array(sizes), T)
    with pytest.raises(GmmInputError, match=match):  # concrete inside jit too (a closed-over numpy constant)
        jax.jit(lambda: group_metadata_from_sizes(np.array(sizes), T).group_ends_E)()


def test_traced_bad_group_sizes_fail_at_run_time():
    build = jax.jit(lambda s: group_metadata_from_sizes(s, T).group_ends_E)
    np.testing.assert_array_equal(build(jnp.array([5, 0, 7])), [5, 5, 12])
    with pytest.raises(Exception, match="sum to the token count 12"):
        jax.block_until_ready(build(jnp.array([5, 0, 6])))


def test_bad_expert_ids():
    with pytest.raises(GmmInputError, match=r"\[0, 3\); got \[3\] at token\(s\) \[1\]"):
        make_group_metadata(np.array([0, 3, 1]), 3)
    with pytest.raises(GmmInputError, match="1-D"):
        make_group_metadata(np.zeros((2, 2), np.int32), 3)
    with pytest.raises(GmmInputError, match="integer"):
        make_group_metadata(np.zeros(3, np.float32), 3)
    build = jax.jit(lambda ids: make_group_metadata(ids, 3).group_sizes_E)
    with pytest.raises(Exception, match=r"expert ids must lie in \[0, 3\)"):
        jax.block_until_ready(build(jnp.array([0, -1, 2])))


def test_named_implementations():
    with pytest.raises(GmmInputError, match="unknown implementation 'triton'"):
        resolve_implementation("triton", META)
    assert resolve_implementation(None, META) == "xla"  # CPU default, no fallback
    if jax.default_backend() != "gpu":
        with pytest.raises(ImplementationUnavailableError, match="needs a GPU backend"):
            _trace(lambda x, w: gmm(x, w, META, implementation="pallas_gpu"),
                   spec((T, D), jnp.float32), spec((E, D, X), jnp.float32))


def test_none_falls_back_and_logs(monkeypatch, caplog):
    monkeypatch.setattr(api.jax, "default_backend", lambda: "gpu")
    assert resolve_implementation(None, META) == "xla"  # only the routed experts, until Pallas is validated
    monkeypatch.setattr(api, "_DEFAULT_ORDER", {"gpu": ("pallas_gpu", "reference")})
    monkeypatch.setattr(pallas, "gpu_unavailable_reason", lambda tile_m, dims: "no Triton here")
    with caplog.at_level(logging.WARNING, logger="kernels.gmm.api"):
        assert resolve_implementation(None, META) == "reference"
    assert "pallas_gpu is unavailable (no Triton here)" in caplog.text
    with pytest.raises(ImplementationUnavailableError, match="no Triton here"):
        resolve_implementation("pallas_gpu", META)


def test_gpu_constraints_are_reported():
    with pytest.raises(ImplementationUnavailableError, match="multiple of 16; got 24"):
        pallas.fit_block(24, 128, gpu=True)
    assert pallas.fit_block(24, 128, gpu=False) == 8
    assert pallas.fit_block(5504, 128, gpu=True) == 128 and pallas.fit_block(576, 128, gpu=True) == 64


def test_top_level_package_exports():
    import kernels.gmm as gmm_package

    assert kernels.expert_mlp is expert_mlp and gmm_package.gmm is gmm
    assert set(gmm_package.__all__) <= set(dir(kernels)) and kernels.__all__ == gmm_package.__all__
    with pytest.raises(AttributeError, match="no attribute 'not_a_kernel'"):
        kernels.not_a_kernel
