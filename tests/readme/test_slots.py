"""Experts behind a slot table: C < E slots give the all-resident model's outputs for resident experts, swapping
an expert in never recompiles, and a route to a non-resident expert is refused on the host."""

import types

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from readme_jax import functional, refactor, slots
from readme_jax.errors import ReadmeJaxError
from readme_jax.generate import SamplingParams, generate_ids
from readme_jax.lm import MoELM
from readme_jax.moe import MoEConfig
from readme_jax.router import RouterConfig, init_router
from tests.helpers import tiny_config, tiny_moe_parts

E = 4


@pytest.fixture(scope="module")
def full():
    cfg, pure, masks = tiny_moe_parts(E)
    model = refactor.build_moe(cfg, pure, masks, "sliced")
    rng = np.random.default_rng(4)
    tokens = jnp.asarray(rng.integers(4, cfg.vocab_size, (2, 12)))
    return model, pure, masks, tokens


def _forward(model, tokens, experts):
    return np.asarray(functional.forward(*nnx.split(model), tokens, jnp.asarray(experts)))


def test_shared_neurons_are_kept_apart_and_never_duplicated(full):
    model, _, masks, _ = full
    cfg = model.cfg
    assert cfg.shared_widths == tuple(int(m.all(0).sum()) for m in masks)
    for n, block in enumerate(model.blocks):
        assert block.w_gate_up_D2R.shape == (cfg.d_model, 2 * cfg.shared_width(n))
        assert block.experts[0].w_gate_up_D2X.shape == (cfg.d_model, 2 * (cfg.expert_width - cfg.shared_width(n)))
    assert cfg.expert_bytes() == sum(3 * cfg.d_model * cfg.routed_width(n) for n in range(cfg.n_layers)) * 4


def test_sliced_with_stacked_slots_equals_masked(full):
    _, pure, masks, tokens = full
    experts = np.random.default_rng(5).integers(0, E, tokens.shape)
    masked = refactor.build_moe(tiny_config(), pure, masks, "masked")
    stacked = refactor.build_moe(tiny_config(), pure, masks, "sliced", kernel="xla")
    assert stacked.blocks[0].w_gate_CDX.shape[0] == E
    np.testing.assert_allclose(_forward(stacked, tokens, experts), _forward(masked, tokens, experts), atol=1e-5)


def test_fewer_slots_equal_all_resident_and_swaps_do_not_recompile(full):
    model, _, _, tokens = full
    few = slots.with_slots(model, [2, 0])
    assert few.cfg.n_slots == 2 and np.asarray(few.slot_of_expert_E[...]).tolist() == [1, -1, 0, -1]
    routes = np.where(np.random.default_rng(6).random(tokens.shape) < 0.5, 0, 2)
    np.testing.assert_allclose(_forward(few, tokens, routes), _forward(model, tokens, routes), atol=1e-5)
    graphdef, state = nnx.split(few)
    compiled = functional.forward._cache_size()
    bank = slots.expert_bank(model)
    swapped = slots.install(few.cfg, state, 1, 3, bank[3])  # expert 3 replaces expert 0 in slot 1
    assert np.asarray(swapped["slot_of_expert_E"][...]).tolist() == [-1, -1, 0, 1]
    assert np.asarray(state["slot_of_expert_E"][...]).tolist() == [1, -1, 0, -1]  # the old state is untouched
    routes = np.where(routes == 0, 3, 2)
    got = np.asarray(functional.forward(graphdef, swapped, tokens, jnp.asarray(routes)))
    np.testing.assert_allclose(got, _forward(model, tokens, routes), atol=1e-5)
    assert functional.forward._cache_size() == compiled


def test_route_to_a_non_resident_expert_is_refused_on_the_host(full):
    model, _, _, tokens = full
    few = slots.with_slots(model, [1])
    cfg = tiny_config()
    router = init_router(RouterConfig(vocab_size=cfg.vocab_size, n_experts=E, d_model=16, d_ff=16,
                                      max_seq_len=cfg.max_seq_len), rngs=nnx.Rngs(0))
    lm = MoELM(few, tokenizer=types.SimpleNamespace(pad_id=0, eos_ids=()), source="tiny", router=router)
    with pytest.raises(ReadmeJaxError, match=r"routed to expert\(s\) \[0\], which hold no slot \(resident experts: \[1\]\)"):
        lm.logits(np.asarray(tokens), np.zeros(tokens.shape, np.int32))
    # routes made on the device by the router: generation stops and the host raises, naming the expert
    experts = lm.route(np.asarray(tokens))[0]
    resident = (int(experts[0]) + 1) % E
    target = int(experts[experts != resident][0])  # the first prompt token whose expert holds no slot
    few = slots.with_slots(model, [resident])
    with pytest.raises(ReadmeJaxError, match=f"expert {target}, which holds no slot"):
        generate_ids(*nnx.split(few), few.cfg, [np.asarray(tokens)[0].tolist()], SamplingParams(max_new_tokens=4),
                     router=nnx.split(router))


def test_bad_slot_inputs(full):
    model, _, _, _ = full
    with pytest.raises(ReadmeJaxError, match=r"capacity must be in \[1, n_experts=4\]"):
        slots.with_slots(model, [])
    with pytest.raises(ReadmeJaxError, match="distinct ids in"):
        slots.with_slots(model, [0, 4])
    with pytest.raises(ReadmeJaxError, match=r"n_slots=5 must be in \[1, n_experts=4\]"):
        MoEConfig.from_dense(tiny_config(), n_experts=4, form="sliced", n_slots=5)
    few = slots.with_slots(model, [0, 1])
    state = nnx.state(few)
    bank = slots.expert_bank(model)
    with pytest.raises(ReadmeJaxError, match=r"expert 4 out of range \[0, 4\)"):
        slots.install(few.cfg, state, 0, 4, bank[0])
    with pytest.raises(ReadmeJaxError, match=r"slot 2 out of range \[0, 2\)"):
        slots.install(few.cfg, state, 2, 3, bank[3])
    with pytest.raises(ReadmeJaxError, match="already resident in slot 1"):
        slots.install(few.cfg, state, 0, 1, bank[1])
    with pytest.raises(ReadmeJaxError, match="do not fit slot shape"):
        slots.install(few.cfg, state, 0, 3, {n: tuple(w[:, :1] for w in ws) for n, ws in bank[3].items()})
