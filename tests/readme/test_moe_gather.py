"""The masked MoE's gathered MLP (``masked_compute="gather"``) is the masked one: values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from readme_jax import refactor
from readme_jax.errors import ReadmeJaxError
from readme_jax.moe import MoEConfig, NeuronMask, with_masked_compute
from tests.helpers import tiny_config, tiny_moe_parts

E = 3


@pytest.fixture(scope="module")
def parts():
    cfg, pure, masks = tiny_moe_parts(E)
    rng = np.random.default_rng(4)
    tokens = jnp.asarray(rng.integers(4, cfg.vocab_size, (2, 12)))
    experts = jnp.asarray(rng.integers(0, E, (2, 12)))
    return cfg, pure, masks, tokens, experts


def loss_and_grads(model, tokens, experts, seed=5):
    """The logits, a loss that weighs every logit differently, and its gradient over every parameter."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    probe_BLV = jax.random.normal(jax.random.key(seed), (*tokens.shape, model.cfg.vocab_size))

    def loss(p):
        logits_BLV = nnx.merge(graphdef, p, rest)(tokens, route=experts)
        return jnp.sum(logits_BLV * probe_BLV), logits_BLV

    (value, logits_BLV), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return np.asarray(logits_BLV), float(value), nnx.to_pure_dict(grads)


@pytest.mark.parametrize("n_experts", [E, 1])
def test_gathered_equals_masked_values_and_gradients(parts, n_experts):
    cfg, pure, masks, tokens, experts = parts
    masks = masks[:, :n_experts]
    experts = experts % n_experts
    by_mask = refactor.build_moe(cfg, pure, masks, "masked")
    by_gather = refactor.build_moe(cfg, pure, masks, "masked", masked_compute="gather")
    assert by_gather.cfg.gathers and not by_mask.cfg.gathers
    logits_m, value_m, grads_m = loss_and_grads(by_mask, tokens, experts)
    logits_g, value_g, grads_g = loss_and_grads(by_gather, tokens, experts)
    np.testing.assert_allclose(logits_g, logits_m, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(value_g, value_m, rtol=1e-5)
    for g, m in zip(jax.tree.leaves(grads_g), jax.tree.leaves(grads_m)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(m), atol=1e-5, rtol=1e-4)
    # a neuron no expert keeps gets exactly zero gradient: the gather's transpose scatters into kept ones only
    kept_F = masks[0].any(axis=0)
    up_grad_DF = np.asarray(grads_g["blocks"][0]["w_up_DF"])
    assert up_grad_DF.shape[1] == cfg.d_ff  # the weights stay dense: training updates the dense ones
    assert up_grad_DF[:, kept_F].any()
    assert n_experts > 1 or not kept_F.all()  # one expert keeps half the neurons: the zero check has teeth
    assert not up_grad_DF[:, ~kept_F].any()


def test_all_ones_masks_run_dense_by_mask(parts):
    """The training teacher (all-ones masks in a gathered model) computes every neuron, as the dense model."""
    cfg, pure, masks, tokens, experts = parts
    model = refactor.build_moe(cfg, pure, masks, "masked", masked_compute="gather")
    graphdef, params, masks_state = nnx.split(model, nnx.Param, NeuronMask)
    ones = jax.tree.map(jnp.ones_like, masks_state)
    teacher = with_masked_compute(nnx.merge(graphdef, params, ones), "mask")
    dense = refactor.build_moe(cfg, pure, np.ones((cfg.n_layers, 1, cfg.d_ff), bool), "masked")
    np.testing.assert_allclose(np.asarray(teacher(tokens, route=experts)),
                               np.asarray(dense(tokens, route=jnp.zeros_like(experts))), atol=1e-5, rtol=1e-5)


def test_probed_forward_sees_the_full_masked_intermediate(parts):
    cfg, pure, masks, tokens, experts = parts
    seen = {}
    for compute in ("mask", "gather"):
        model = refactor.build_moe(cfg, pure, masks, "masked", masked_compute=compute)
        rows = []
        B, L = tokens.shape
        model.hidden(tokens, jnp.broadcast_to(jnp.arange(L), (B, L)), jnp.ones((B, L), bool), route=experts,
                     probe=rows.append)
        seen[compute] = [np.asarray(r) for r in rows]
    assert seen["gather"][0].shape[-1] == cfg.d_ff
    for g, m in zip(seen["gather"], seen["mask"]):
        np.testing.assert_allclose(g, m, atol=1e-6)


def test_gather_refuses_uneven_expert_widths(parts):
    cfg, pure, masks, _, _ = parts
    uneven = masks.copy()
    uneven[1, 2, np.flatnonzero(~uneven[1, 2])[0]] = True  # layer 1, expert 2 keeps one neuron more
    with pytest.raises(ReadmeJaxError, match="layer 1, expert 2 keeps"):
        refactor.build_moe(cfg, pure, uneven, "masked", masked_compute="gather")
    refactor.build_moe(cfg, pure, uneven, "masked")  # the mask form has no static width to respect


def test_unknown_masked_compute_is_refused():
    with pytest.raises(ReadmeJaxError, match="masked_compute='scatter'"):
        MoEConfig.from_dense(tiny_config(), n_experts=2, expert_width=32, masked_compute="scatter")


def test_training_gathers_automatically_only_for_one_even_expert(parts):
    from train.config import resolve_mlp_compute

    _, _, masks, _, _ = parts
    assert resolve_mlp_compute("auto", masks[:, :1]) == "gather"  # the pruned-dense baseline
    assert resolve_mlp_compute("auto", masks) == "mask"  # E experts: the weight gather costs what it saves
    uneven = masks[:, :1].copy()
    uneven[0, 0, np.flatnonzero(~uneven[0, 0])[0]] = True
    assert resolve_mlp_compute("auto", uneven) == "mask"
    assert resolve_mlp_compute("gather", masks) == "gather"
