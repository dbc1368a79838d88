"""Mesh and sharding rules: parsing, full coverage of every model's state, sharded step == one-device step.

Models are built from shapes only (``nnx.eval_shape``) or from numpy weights, so no per-shape random-init
kernels compile; the only compiles are the two training steps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from readme_jax import refactor
from readme_jax.errors import ReadmeJaxError
from readme_jax.model import abstract_model
from readme_jax.moe import MoEConfig, MoELlama
from readme_jax.router import RouterConfig, init_router
from readme_jax.trees import leaf_name
from tests.helpers import tiny_config
from train import sharding
from train.sharding import MeshSpec

E = 3


@pytest.fixture(scope="module")
def eight_devices():
    # tests/conftest.py fakes 8 CPU devices; a real single-GPU run has fewer.
    if jax.device_count() < 8:
        pytest.skip(f"needs 8 devices, have {jax.device_count()}")
    return jax.devices()[:8]


@pytest.fixture(scope="module")
def mesh(eight_devices):
    return sharding.make_mesh(MeshSpec.parse("data=2,fsdp=2,tensor=2"), eight_devices)


@pytest.mark.parametrize("text, want", [
    ("", MeshSpec(-1, 1, 1)),
    ("data=2,fsdp=2,tensor=2", MeshSpec(2, 2, 2)),
    (" tensor = 2 ", MeshSpec(-1, 1, 2)),
    ("fsdp=-1,data=2", MeshSpec(2, -1, 1)),
])
def test_mesh_spec_parse(text, want):
    assert MeshSpec.parse(text) == want


@pytest.mark.parametrize("text, match", [
    ("data=x", "not an integer"),
    ("pipe=2", "pipe=2"),
    ("data2", "AXIS=SIZE"),
    ("data=2,data=2", "given twice"),
    ("data=0", "data=0"),
    ("tensor=-2", "tensor=-2"),
    ("data=-1,fsdp=-1", "at most one"),
])
def test_mesh_spec_parse_errors(text, match):
    with pytest.raises(ReadmeJaxError, match=match):
        MeshSpec.parse(text)


@pytest.mark.parametrize("text, shape, n", [
    ("", (8, 1, 1), 8),
    ("tensor=2", (4, 1, 2), 8),
    ("data=2,fsdp=2,tensor=2", (2, 2, 2), 8),
    ("fsdp=2", (2, 2, 1), 4),
])
def test_make_mesh(text, shape, n, eight_devices):
    mesh = sharding.make_mesh(text, devices=eight_devices[:n])
    assert mesh.axis_names == sharding.MESH_AXES
    assert tuple(mesh.shape.values()) == shape
    assert mesh.devices.size == n


@pytest.mark.parametrize("spec, match", [
    (MeshSpec(3, 1, 1), r"data=3,fsdp=1,tensor=1 \(product 3\) do not match the 8 devices"),
    (MeshSpec(2, 2, 1), r"product 4\) do not match the 8 devices"),
    (MeshSpec(-1, 3, 1), r"product 3\) do not divide the 8 devices"),
])
def test_make_mesh_errors(spec, match, eight_devices):
    with pytest.raises(ReadmeJaxError, match=match):
        sharding.make_mesh(spec, eight_devices)


def _router_state(**overrides):
    cfg = RouterConfig(**{"vocab_size": 97, "n_experts": E, "d_model": 32, "d_ff": 32, "n_heads": 4, **overrides})
    return nnx.state(nnx.eval_shape(lambda: init_router(cfg, rngs=nnx.Rngs(0))))


def _moe_state(form):
    cfg = MoEConfig.from_dense(tiny_config(), n_experts=E, expert_width=32, form=form)
    return abstract_model(cfg, MoELlama)[1]


STATES = {
    "llama": lambda: abstract_model(tiny_config())[1],
    "llama_tied": lambda: abstract_model(tiny_config(tie_embeddings=True))[1],
    "moe_masked": lambda: _moe_state("masked"),
    "moe_sliced": lambda: _moe_state("sliced"),
    "router_silu": lambda: _router_state(),
    "router_swiglu_nobias": lambda: _router_state(mlp="swiglu", bias=False),
    "router_swiglu": lambda: _router_state(mlp="swiglu"),
}


@pytest.mark.parametrize("model", sorted(STATES))
def test_every_state_leaf_gets_a_sharding(model, mesh):
    state = STATES[model]()
    shardings = sharding.state_shardings(state, mesh)
    assert jax.tree.structure(shardings) == jax.tree.structure(state)
    leaves = jax.tree.leaves(shardings)
    assert leaves and all(isinstance(s, NamedSharding) and s.mesh == mesh for s in leaves)
    for s, x in zip(leaves, jax.tree.leaves(state)):
        assert s.shard_shape(x.shape)  # a valid (evenly dividing) spec for the leaf's shape
    # the same rules apply to the pure-dict form of the state
    pure = nnx.to_pure_dict(state)
    assert jax.tree.leaves(sharding.state_shardings(pure, mesh)) == leaves


def test_specs_of_known_leaves(mesh):
    specs = {}
    for model in ("moe_masked", "moe_sliced", "router_swiglu"):
        flat = jax.tree_util.tree_flatten_with_path(sharding.state_shardings(STATES[model](), mesh))[0]
        specs.update({(model, leaf_name(p)): s.spec for p, s in flat})
    assert specs["moe_masked", "w_gate_DF"] == P("fsdp", "tensor")
    assert specs["moe_masked", "w_down_FD"] == P("tensor", "fsdp")
    assert specs["moe_masked", "w_q_DHK"] == P("fsdp", "tensor", None)
    assert specs["moe_masked", "mask_EF"] == P(None, "tensor")
    # vocab 97 does not divide over tensor=2: that dimension is replicated, the other still sharded
    assert specs["moe_masked", "embed_VD"] == P(None, "fsdp")
    assert specs["moe_masked", "w_head_DV"] == P("fsdp", None)
    assert specs["moe_sliced", "w_gate_up_D2X"] == P("fsdp", "tensor")
    assert specs["moe_sliced", "w_down_XD"] == P("tensor", "fsdp")
    assert specs["router_swiglu", "b_gate_F"] == P("tensor")
    assert specs["router_swiglu", "w_router_out_DE"] == P("fsdp", None)


def test_indivisible_dimension_is_replicated(mesh):
    # SmolLM2-135M-like heads: 9 query heads and 3 KV heads do not split over tensor=2.
    state = {"w_q_DHK": jax.ShapeDtypeStruct((576, 9, 64), jnp.float32),
             "w_k_DGK": jax.ShapeDtypeStruct((576, 3, 64), jnp.float32),
             "embed_VD": jax.ShapeDtypeStruct((49152, 576), jnp.float32)}
    specs = {k: s.spec for k, s in sharding.state_shardings(state, mesh).items()}
    assert specs == {"w_q_DHK": P("fsdp", None, None), "w_k_DGK": P("fsdp", None, None),
                     "embed_VD": P("tensor", "fsdp")}


def test_unknown_leaf_and_wrong_rank_are_errors(mesh):
    with pytest.raises(ReadmeJaxError, match="no sharding rule for state leaf 'w_mystery_DX'"):
        sharding.state_shardings({"blocks": {0: {"w_mystery_DX": np.zeros((4, 4))}}}, mesh)
    with pytest.raises(ReadmeJaxError, match=r"w_up_DF.*do not fit an array of shape \(4, 4, 4\)"):
        sharding.state_shardings({"w_up_DF": np.zeros((4, 4, 4))}, mesh)
    # a scalar needs no name: it is replicated (optimizer step counts)
    assert sharding.state_shardings({"count": np.int32(0)}, mesh)["count"].spec == P()


def test_batch_rules(mesh):
    sharding.check_batch(4, mesh)
    sharding.check_batch(8, mesh)
    for bad in (6, 2, 0):
        with pytest.raises(ReadmeJaxError, match=rf"batch size {bad} does not divide over the data-parallel "
                                                 r"size 4 \(data=2 x fsdp=2\)"):
            sharding.check_batch(bad, mesh)
    assert sharding.batch_sharding(mesh, 2).spec == P(("data", "fsdp"), None)
    data_only = sharding.make_mesh("data=8", mesh.devices.ravel())
    assert sharding.batch_sharding(data_only, 3).spec == P("data", None, None)
    sharding.check_batch(8, data_only)
    with pytest.raises(ReadmeJaxError, match="ndim=0"):
        sharding.batch_sharding(mesh, 0)


def _numpy_dense_pure(cfg, seed):
    """Dense weights from numpy (norm weights near 1, matrices ~N(0, 0.02^2)): no init kernels to compile."""
    rng = np.random.default_rng(seed)

    def init(path, s):
        noise = rng.standard_normal(s.shape).astype(np.float32)
        return 1 + 0.1 * noise if leaf_name(path).endswith("norm_D") else 0.02 * noise

    return jax.tree_util.tree_map_with_path(init, nnx.to_pure_dict(abstract_model(cfg)[1]))


def test_sharded_train_step_equals_single_device(mesh):
    cfg = tiny_config(n_layers=1)  # one layer: the compile time of the two steps is most of this test
    masks_NEF = refactor.domain_masks(np.random.default_rng(0).random((E, cfg.n_layers, cfg.d_ff)), 0.5)
    moe = refactor.build_moe(cfg, _numpy_dense_pure(cfg, 1), masks_NEF, "masked")
    graphdef, params, rest = nnx.split(moe, nnx.Param, ...)  # rest: the NeuronMask variables
    # eps=1e-6, not 1e-8: Adam's first step is lr * g / (|g| + eps), whose slope lr / eps turns fp32
    # summation-order noise in a near-zero gradient entry into a visible fraction of lr.
    tx = optax.adamw(1e-3, eps=1e-6, weight_decay=0.1)
    opt_state = tx.init(params)

    def loss_fn(params, rest, tokens_BL, expert_id_BL):
        logits_BLV = nnx.merge(graphdef, params, rest)(tokens_BL[:, :-1], route=expert_id_BL[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits_BLV, tokens_BL[:, 1:]).mean()

    def step(params, rest, opt_state, tokens_BL, expert_id_BL):
        loss, grads = jax.value_and_grad(loss_fn)(params, rest, tokens_BL, expert_id_BL)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(2)
    B, L = 4, 9
    tokens_BL = jnp.asarray(rng.integers(4, cfg.vocab_size, (B, L)), jnp.int32)
    expert_id_BL = jnp.asarray(rng.integers(0, E, (B, L)), jnp.int32)
    # LLVM -O0 for both steps: a third less compile time; partitioning, the thing under test, is unchanged.
    fast_compile = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    want_params, want_opt, want_loss = jax.jit(step, compiler_options=fast_compile)(
        params, rest, opt_state, tokens_BL, expert_id_BL)

    sharding.check_batch(B, mesh)
    param_sh, opt_sh = sharding.state_shardings(params, mesh), sharding.state_shardings(opt_state, mesh)
    rest_sh, batch_sh = sharding.state_shardings(rest, mesh), sharding.batch_sharding(mesh, 2)
    sharded_step = jax.jit(step, in_shardings=(param_sh, rest_sh, opt_sh, batch_sh, batch_sh),
                           out_shardings=(param_sh, opt_sh, sharding.replicated(mesh)), donate_argnums=(0, 2),
                           compiler_options=fast_compile)
    params_in, opt_in = sharding.shard_state(params, mesh), sharding.shard_state(opt_state, mesh)
    got_params, got_opt, got_loss = sharded_step(params_in, sharding.shard_state(rest, mesh), opt_in,
                                                 jax.device_put(tokens_BL, batch_sh),
                                                 jax.device_put(expert_id_BL, batch_sh))
    assert all(x.is_deleted() for x in jax.tree.leaves((params_in, opt_in)))  # donated: updated in place

    np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-5)
    assert jax.tree.structure(got_params) == jax.tree.structure(want_params)
    got_w = nnx.to_pure_dict(got_params)["blocks"][0]["w_gate_DF"]
    assert got_w.sharding.spec == P("fsdp", "tensor") and got_w.addressable_shards[0].data.shape == (16, 32)
    # Adam's moments are smooth in the gradient: compare them at the fp32 summation-order tolerance.
    for got, want in zip(jax.tree.leaves(got_opt), jax.tree.leaves(want_opt)):
        scale = float(np.abs(np.asarray(want)).max()) or 1.0
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5 * scale)
    # The updated parameters, to 1e-3 * lr absolute (see eps above).
    for got, want in zip(jax.tree.leaves(got_params), jax.tree.leaves(want_params)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_distributed_launch_signals():
    kwargs = sharding._distributed_kwargs
    assert kwargs({}) is None
    assert kwargs({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None
    assert kwargs({"SLURM_NTASKS": "4"}) is None  # bare salloc: no srun step to join
    assert kwargs({"SLURM_NTASKS": "4", "SLURM_PROCID": "1"}) == {}
    assert kwargs({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_MCA_orte_hnp_uri": "x"}) == {}
    assert kwargs({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
                   "JAX_PROCESS_ID": "1"}) == {"num_processes": 2, "process_id": 1}
    assert kwargs({"READMEJAX_DISTRIBUTED": "1"}) == {}
    assert kwargs({"READMEJAX_DISTRIBUTED": "0", "SLURM_NTASKS": "4", "SLURM_PROCID": "1"}) is None
    with pytest.raises(ReadmeJaxError, match="JAX_NUM_PROCESSES='two'"):
        kwargs({"JAX_NUM_PROCESSES": "two"})


def test_maybe_initialize_distributed_is_idempotent(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: bool(calls))
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    assert sharding.maybe_initialize_distributed({}) is False
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}
    assert sharding.maybe_initialize_distributed(env) is True
    assert sharding.maybe_initialize_distributed(env) is True
    assert calls == [{"num_processes": 2, "process_id": 0, "initialization_timeout": 300}]


def test_unreachable_coordinator_is_a_clear_error_within_the_timeout(tmp_path):
    """A worker whose coordinator never answers ends with one error line after READMEJAX_INIT_TIMEOUT seconds
    (jax itself would abort the process with a C++ fatal error)."""
    import os
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": "1", "READMEJAX_INIT_TIMEOUT": "2"}
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "readme_jax.cli", "train", "--preset", "tiny", "--workdir",
                          str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"error: cannot join the multi-process job: the coordinator 127.0.0.1:{port}" in out.stderr
    assert "within 2 s" in out.stderr and time.monotonic() - t0 < 60
    with pytest.raises(ReadmeJaxError, match="READMEJAX_INIT_TIMEOUT=0 must be a positive"):
        sharding.maybe_initialize_distributed({"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "READMEJAX_INIT_TIMEOUT": "0"})


def test_failed_join_is_a_readme_error(monkeypatch):
    def initialize(**kw):
        raise RuntimeError("jax.distributed.initialize() must be called before any JAX calls")

    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    with pytest.raises(ReadmeJaxError, match="cannot join the multi-process job: .*before any JAX calls"):
        sharding.maybe_initialize_distributed({"SLURM_NTASKS": "2", "SLURM_PROCID": "0"})
