"""Experts in and out of a sliced MoE's slots (``readme_jax.moe``): the host bank of routed weights, a model that
holds only some experts, and the functional update that loads one expert into one slot.

1. ``expert_bank(model)``: every expert's routed weights, per layer ``(w_gate_up_D2X, w_down_XD)``, as host
   numpy arrays, taken from an all-resident sliced model (the permanent neurons stay in the model).
2. ``with_slots(model, resident)``: the same model with only the experts ``resident`` in slots 0..C-1.
3. ``install(state, slot, expert, weights)``: a new state (the old one untouched) with ``weights`` in ``slot``
   at every layer and the slot table updated; the shapes are those of the compiled programs, so a jitted
   forward over the new state reuses its compilation.

A serving engine (``serve.engine``) keeps the bank in host memory and calls ``install`` (or its own donated
variant) at iteration boundaries, under the expert cache's decisions.
"""

import jax
import numpy as np
from flax import nnx

from readme_jax.errors import ReadmeJaxError

WEIGHT_NAMES = ("w_gate_up_D2X", "w_down_XD")


def _require_slots(cfg) -> None:
    if getattr(cfg, "form", None) != "sliced" or cfg.stacked_slots:
        raise ReadmeJaxError("expert slots need the sliced MoE with per-slot weights (readme_jax.load(folder) "
                             "without kernel=...)")


def expert_bank(model) -> list[dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Per expert e (all E must be resident), {layer: (w_gate_up_D2X, w_down_XD)} as host numpy."""
    cfg = model.cfg
    _require_slots(cfg)
    table = np.asarray(model.slot_of_expert_E[...])
    if (table < 0).any():
        raise ReadmeJaxError(f"the expert bank needs every expert resident; experts {np.flatnonzero(table < 0)} "
                             "are not")
    return [{n: tuple(np.asarray(w) for w in block.experts[int(table[e])].weights())
             for n, block in enumerate(model.blocks)} for e in range(cfg.n_experts)]


def with_slots(model, resident):
    """A model of the same weights holding only experts ``resident`` (in slots 0..C-1; C = len(resident))."""
    cfg = model.cfg
    _require_slots(cfg)
    resident = [int(e) for e in resident]
    if not 1 <= len(resident) <= cfg.n_experts:
        raise ReadmeJaxError(f"{len(resident)} slots: the capacity must be in [1, n_experts={cfg.n_experts}]")
    bad = [e for e in resident if not 0 <= e < cfg.n_experts]
    if bad or len(set(resident)) != len(resident):
        raise ReadmeJaxError(f"resident experts {resident} must be distinct ids in [0, {cfg.n_experts})")
    from readme_jax.lm import jax_to_numpy
    from readme_jax.moe import MoELlama
    from readme_jax.weights import build_model

    bank = expert_bank(model)
    pure = jax_to_numpy(nnx.to_pure_dict(nnx.state(model)))
    for n, block in pure["blocks"].items():
        block["experts"] = {c: dict(zip(WEIGHT_NAMES, bank[e][n])) for c, e in enumerate(resident)}
    table = np.full(cfg.n_experts, -1, np.int32)
    table[resident] = np.arange(len(resident))
    pure["slot_of_expert_E"] = table
    return build_model(cfg.replace(n_slots=len(resident)), pure, MoELlama)


def install(cfg, state, slot: int, expert: int, weights: dict) -> nnx.State:
    """A new state with ``expert``'s ``weights`` ({layer: (g, u, d)}) in ``slot``; the slot's old expert leaves.

    Raises on an out-of-range slot or expert, an expert already resident in another slot, or weight shapes that
    are not the slot's.
    """
    _require_slots(cfg)
    if not 0 <= int(slot) < cfg.n_slots:
        raise ReadmeJaxError(f"slot {slot} out of range [0, {cfg.n_slots})")
    if not 0 <= int(expert) < cfg.n_experts:
        raise ReadmeJaxError(f"expert {expert} out of range [0, {cfg.n_experts})")
    table = np.asarray(state["slot_of_expert_E"][...]).copy()
    if table[expert] >= 0 and table[expert] != slot:
        raise ReadmeJaxError(f"expert {expert} is already resident in slot {int(table[expert])}")
    new = jax.tree.map(lambda leaf: leaf, state)  # a new State sharing every array
    for n in range(cfg.n_layers):
        target = new["blocks"][n]["experts"][slot]
        for name, w in zip(WEIGHT_NAMES, weights[n]):
            if tuple(w.shape) != tuple(target[name].shape):
                raise ReadmeJaxError(f"layer {n} {name}: weights of shape {tuple(w.shape)} do not fit slot shape "
                                     f"{tuple(target[name].shape)}")
            target[name].set_value(jax.numpy.asarray(w, target[name].get_value().dtype))
    table[table == slot] = -1
    table[expert] = slot
    new["slot_of_expert_E"].set_value(jax.numpy.asarray(table))
    return new
