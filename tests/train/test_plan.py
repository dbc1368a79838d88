"""The compiled memory plan: per-device accounting from the shardings, the CLI on the tiny preset, remat."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from readme_jax.config import to_hf_config
from tests.helpers import tiny_config, tiny_model
from train import plan, sharding


@pytest.fixture(scope="module")
def mesh():
    if jax.device_count() < 8:
        pytest.skip("needs the 8 fake CPU devices of tests/conftest.py")
    return sharding.make_mesh("fsdp=4,tensor=2", jax.devices()[:8])


def test_device_bytes_follow_the_shardings(mesh):
    tree = {"a": jax.ShapeDtypeStruct((64, 32), jnp.float32), "b": jax.ShapeDtypeStruct((), jnp.int32)}
    split = {"a": NamedSharding(mesh, P("fsdp", "tensor")), "b": NamedSharding(mesh, P())}
    assert plan.device_bytes(tree, split) == 64 * 32 * 4 // 8 + 4
    assert plan.device_bytes(tree, jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)) == 64 * 32 * 4 + 4


def test_remat_keeps_loss_and_gradients_and_holds_one_block():
    """Per-block remat: the same loss and gradients, and the compiled backward's temporaries shrink with the
    number of blocks (each block's attention scores and MLP intermediates are recomputed, not kept)."""
    cfg = tiny_config(n_layers=6, max_seq_len=256)
    graphdef, params = nnx.split(tiny_model(cfg))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 256)), jnp.int32)

    def grad_fn(remat):
        return jax.jit(jax.value_and_grad(lambda p: jnp.mean(nnx.merge(graphdef, p)(tokens, remat=remat) ** 2)))

    plain, remat = grad_fn(False), grad_fn(True)
    (loss_p, g_p), (loss_r, g_r) = plain(params), remat(params)
    np.testing.assert_allclose(float(loss_r), float(loss_p), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_r), jax.tree.leaves(g_p)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    temp = [f.lower(params).compile().memory_analysis().temp_size_in_bytes for f in (plain, remat)]
    assert temp[1] < 0.5 * temp[0], temp


def test_plan_cli_on_the_tiny_preset(tmp_path, mesh, capsys):
    """``readme-jax plan`` compiles the tiny run's three programs and accounts bytes that add up."""
    from readme_jax.cli import main
    from train import cli

    cfg = tiny_config()
    (tmp_path / "config.json").write_text(json.dumps(to_hf_config(cfg)))

    class EntryPoint:  # the train package's command module, from this worktree
        name, value = "train", "train.cli"

        def load(self):
            return cli

    argv = ["plan", "--preset", "tiny", "--model", str(tmp_path), "--experts", "3", "--mesh", "fsdp=4,tensor=2",
            "--remat", "on", "--json", "--device-gb", "1"]
    assert main(argv, entry_points=[EntryPoint()]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["mesh"] == "fsdp=4,tensor=2" and row["remat"] is True and row["fits"] is True
    assert row["params"] == row["teacher"] > 0
    # The tiny preset trains every backbone parameter: AdamW's two moments per parameter, plus step counts.
    assert 2 * row["params"] <= row["opt_expert"] <= 2 * row["params"] + 64
    assert min(row["router_step"], row["teacher_fwd"], row["expert_step"]) > 0
    assert row["expert_peak"] == row["params"] + row["teacher"] + row["other"] + row["opt_expert"] + row["expert_step"]
