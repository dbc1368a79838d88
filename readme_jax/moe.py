"""Read-ME mixture of experts carved out of a dense Llama's MLP neurons, in two forms.

One config (``MoEConfig``) serves both forms; expert ids ``expert_id_BL`` are given once per forward
and used by every layer (pre-gating: the router runs before the backbone).

* masked-dense (``form="masked"``, for profiling and training): the dense weights plus a fixed per-layer
  neuron mask ``mask_EF``; token t keeps neurons ``mask_EF[expert_id[t]]`` of the SwiGLU intermediate.
  Neurons shared by several experts stay weight-tied, as in the reference code. ``masked_compute`` picks how:
  ``"mask"`` computes all F neurons and multiplies by the mask; ``"gather"`` gathers each expert's k kept
  neurons' weights out of the dense ones and computes only those (the same function, values and gradients:
  the gather's transpose scatter-adds into the dense weights, masked-out neurons get zero gradient). Activation
  probes always see the full masked intermediate, and a model run dense through all-ones masks (the training
  teacher) must compute by mask: ``with_masked_compute``.
* sliced (``form="sliced"``, for inference and serving): per layer n, the permanent neurons (those in every
  expert's set, R_n of them) are ordinary dense parameters ``w_gate_up_D2R`` (gate and up side by side) and
  ``w_down_RD`` that every token uses; each expert's specific neurons (X_n = k - R_n) sit in one of C slots. SwiGLU is
  elementwise over neurons, so permanent + specific is exactly the masked form's sum over the expert's set.

Slots. The routed (specific) weights live in C <= E slots and a ``slot_of_expert_E`` table (int32 [E], -1 = not
resident) maps experts to slots. The table is model state, i.e. data to the jitted programs: a serving engine
keeps a few experts on the device and swaps them by writing slot weights and the table, never recompiling.
A token routed to a non-resident expert is refused on the host (``check_resident`` for routes the host knows;
the generation programs return a flag for routes made on the device, see ``readme_jax.functional``); inside
the program its slot is clamped to 0 so nothing reads out of bounds.

Slot layout follows ``MoEConfig.kernel``: ``None`` / ``"slots"`` keeps each slot's three arrays separate and
runs ``kernels.gmm.slot_mlp`` (only occupied slots compute; the decode step over one shared expert is one
dense SwiGLU); a ``kernels.gmm`` implementation name (``"xla"``, ``"pallas_gpu"``, ...) stacks the slots as
``w_gate_CDX`` / ``w_up_CDX`` / ``w_down_CXD`` for the grouped-matmul kernels.

Expert e's neuron set is its domain's top-k set, so every expert has exactly k = ``expert_width`` neurons.
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kernels.gmm import make_moe_metadata, make_slot_plan, moe_mlp, slot_mlp, swiglu
from readme_jax.config import LlamaConfig
from readme_jax.errors import ReadmeJaxError
from readme_jax.model import Block, Llama, _param

FORMS = ("masked", "sliced")
MASKED_COMPUTES = ("mask", "gather")  # masked form: all F neurons times the mask, or only each expert's k
SLOT_KERNEL = "slots"


@dataclasses.dataclass(frozen=True)
class MoEConfig(LlamaConfig):
    """A dense Llama config plus the Read-ME fields."""

    n_experts: int = 1  # E
    expert_width: int = 0  # k: neurons per expert, permanent ones included (the domain top-k); 0 means d_ff
    form: str = "masked"
    keep_ratio: float = 1.0
    domains: tuple[str, ...] = ()
    kernel: str | None = None  # sliced form: "slots" (None) or a kernels.gmm implementation (stacked slots)
    shared_widths: tuple[int, ...] = ()  # sliced form: R_n permanent neurons per layer kept apart; () = none
    n_slots: int = 0  # sliced form: C slots for routed experts; 0 means n_experts (all resident)
    masked_compute: str = "mask"  # masked form: "mask" or "gather" (module docstring); the same function

    def __post_init__(self):
        super().__post_init__()
        if self.expert_width == 0:
            object.__setattr__(self, "expert_width", self.d_ff)
        if self.n_slots == 0:
            object.__setattr__(self, "n_slots", self.n_experts)
        object.__setattr__(self, "domains", tuple(self.domains))
        object.__setattr__(self, "shared_widths", tuple(int(r) for r in self.shared_widths))
        if self.n_experts < 1:
            raise ReadmeJaxError(f"config: n_experts={self.n_experts} must be >= 1")
        if not 0 < self.expert_width <= self.d_ff:
            raise ReadmeJaxError(f"config: expert_width={self.expert_width} must be in (0, d_ff={self.d_ff}]")
        if not 0 < self.keep_ratio <= 1:
            raise ReadmeJaxError(f"keep ratio {self.keep_ratio} must be in (0, 1]")
        if self.form not in FORMS:
            raise ReadmeJaxError(f"config: form={self.form!r} not one of {FORMS}")
        if self.masked_compute not in MASKED_COMPUTES:
            raise ReadmeJaxError(f"config: masked_compute={self.masked_compute!r} not one of {MASKED_COMPUTES}")
        if self.domains and len(self.domains) != self.n_experts:
            raise ReadmeJaxError(f"config: {len(self.domains)} domains for n_experts={self.n_experts}")
        if not 1 <= self.n_slots <= self.n_experts:
            raise ReadmeJaxError(f"config: n_slots={self.n_slots} must be in [1, n_experts={self.n_experts}]")
        if self.shared_widths and len(self.shared_widths) != self.n_layers:
            raise ReadmeJaxError(f"config: {len(self.shared_widths)} shared widths for n_layers={self.n_layers}")
        if any(not 0 <= r <= self.expert_width for r in self.shared_widths):
            raise ReadmeJaxError(f"config: shared widths {self.shared_widths} must lie in [0, expert_width="
                                 f"{self.expert_width}]")

    @classmethod
    def from_dense(cls, cfg: LlamaConfig, **fields) -> "MoEConfig":
        base = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(LlamaConfig)}
        return cls(**base, **fields)

    def dense(self) -> LlamaConfig:
        return LlamaConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LlamaConfig)})

    def shared_width(self, layer: int) -> int:
        """R: permanent neurons of ``layer`` held apart from the slots (sliced form)."""
        return self.shared_widths[layer] if self.shared_widths else 0

    def routed_width(self, layer: int) -> int:
        """X: neurons of one expert held in its slot at ``layer`` (sliced form)."""
        return self.expert_width - self.shared_width(layer)

    @property
    def stacked_slots(self) -> bool:
        return self.kernel not in (None, SLOT_KERNEL)

    @property
    def gathers(self) -> bool:
        """Whether the masked form computes only each expert's k neurons (``masked_compute="gather"``)."""
        return self.form == "masked" and self.masked_compute == "gather"

    def active_params(self) -> int:
        """Parameters touched by one token (one expert)."""
        return self.dense().replace(d_ff=self.expert_width).num_params()

    def total_params(self, duplicated: bool = True) -> int:
        """Stored parameters: experts as separate slices (``duplicated``, the paper's count) or unique."""
        if not duplicated:
            return self.dense().num_params()
        mlp_dense = 3 * self.d_model * self.d_ff * self.n_layers
        return self.dense().num_params() - mlp_dense + self.n_experts * 3 * self.d_model * self.expert_width * self.n_layers

    def expert_bytes(self) -> int:
        """Bytes of one expert's routed weights over all layers: what loading it into a slot moves."""
        itemsize = np.dtype(jnp.dtype(self.dtype)).itemsize
        return sum(3 * self.d_model * self.routed_width(n) for n in range(self.n_layers)) * itemsize


class NeuronMask(nnx.Variable):
    """A fixed neuron selection (the masked form's mask_EF): part of the model state, never trained."""


class GatherRoute(NamedTuple):
    """The masked form's route under ``masked_compute="gather"``: the expert ids, plus (E > 1) the tokens'
    grouping by expert, built once per forward and reused by every layer's grouped MLP."""

    expert_id_BL: jax.Array
    meta: object  # kernels.gmm.GroupMetadata, or None for E == 1 (one dense SwiGLU)


def route_expert_ids(route):
    """The masked form's expert ids [B, L] from a prepared route (plain ids, or a ``GatherRoute``)."""
    return route.expert_id_BL if isinstance(route, GatherRoute) else route


def kept_neurons(mask_EF, k: int):
    """idx_EK: the k kept neurons of each expert, ascending. ``k`` is static: every expert keeps exactly k
    (checked where the masks are built into a model, ``readme_jax.refactor.build_moe``)."""
    return jax.vmap(lambda row_F: jnp.nonzero(row_F, size=k)[0].astype(jnp.int32))(mask_EF)


def check_expert_width(masks_NEF, k: int) -> None:
    """Refuse masks in which some expert does not keep exactly k neurons (the gathered MLP's static size)."""
    counts_NE = np.asarray(masks_NEF, bool).sum(axis=-1)
    if (counts_NE != k).any():
        n, e = (int(i) for i in np.argwhere(counts_NE != k)[0])
        raise ReadmeJaxError(f"masked_compute='gather' needs every expert to keep exactly expert_width={k} "
                             f"neurons per layer; layer {n}, expert {e} keeps {int(counts_NE[n, e])} "
                             "(use masked_compute='mask')")


class SlotTable(nnx.Variable):
    """``slot_of_expert_E``: which slot holds each expert (-1 = not resident). State, so it is data to jit."""


class ExpertSlot(nnx.Module):
    """One slot of routed weights at one layer: an expert's specific neurons."""

    def __init__(self, d_model: int, width: int, dtype, *, rngs: nnx.Rngs):
        self.w_gate_up_D2X = _param(rngs, (d_model, 2 * width), dtype)  # [gate | up]: one matmul reads both
        self.w_down_XD = _param(rngs, (width, d_model), dtype)

    def weights(self):
        return self.w_gate_up_D2X[...], self.w_down_XD[...]


class MoEBlock(Block):
    def init_mlp(self, cfg: MoEConfig, rngs: nnx.Rngs, layer: int = 0):
        E, C, D, F, dt = cfg.n_experts, cfg.n_slots, cfg.d_model, cfg.d_ff, jnp.dtype(cfg.dtype)
        if cfg.form == "masked":
            super().init_mlp(cfg, rngs, layer)
            self.mask_EF = NeuronMask(jnp.ones((E, F), bool).at[:, cfg.expert_width:].set(False))
            return
        R, X = cfg.shared_width(layer), cfg.routed_width(layer)
        if R:
            self.w_gate_up_D2R = _param(rngs, (D, 2 * R), dt)
            self.w_down_RD = _param(rngs, (R, D), dt)
        if cfg.stacked_slots:
            self.w_gate_CDX = _param(rngs, (C, D, X), dt)
            self.w_up_CDX = _param(rngs, (C, D, X), dt)
            self.w_down_CXD = _param(rngs, (C, X, D), dt)
        else:
            self.experts = nnx.List([ExpertSlot(D, X, dt, rngs=rngs) for _ in range(C)])

    def mlp(self, h_BLD, route, probe=None):
        if self.cfg.form == "masked":
            if self.cfg.gathers and probe is None:
                return self.gathered_mlp(h_BLD, route)
            hidden_BLF = self.mlp_hidden(h_BLD) * self.mask_EF[...][route_expert_ids(route)].astype(h_BLD.dtype)
            if probe is not None:
                probe(hidden_BLF)
            return jnp.einsum("BLF,FD->BLD", hidden_BLF, self.w_down_FD[...])
        if probe is not None:
            raise ReadmeJaxError("activation probes need the masked form of the MoE model")
        B, L, D = h_BLD.shape
        if self.cfg.stacked_slots:
            y_BLD = moe_mlp(h_BLD, self.w_gate_CDX[...], self.w_up_CDX[...], self.w_down_CXD[...], route,
                            implementation=self.cfg.kernel)
        else:
            y_TD = slot_mlp(h_BLD.reshape(B * L, D), route, tuple(slot.weights() for slot in self.experts))
            y_BLD = y_TD.reshape(B, L, D)
        if hasattr(self, "w_gate_up_D2R"):  # the permanent neurons: one dense SwiGLU for every token
            y_BLD = y_BLD + swiglu(h_BLD, self.w_gate_up_D2R[...], self.w_down_RD[...])
        return y_BLD

    def gathered_mlp(self, h_BLD, route: GatherRoute):
        """The masked MLP over each expert's k kept neurons only: SwiGLU is elementwise over neurons, so the
        masked-out ones add exactly nothing and can be skipped. The weights are gathered from the dense ones
        every forward (the dense weights are what training updates and checkpoints)."""
        idx_EK = kept_neurons(self.mask_EF[...], self.cfg.expert_width)
        w_gate_DF, w_up_DF, w_down_FD = self.w_gate_DF[...], self.w_up_DF[...], self.w_down_FD[...]
        if route.meta is None:  # one expert: every token uses the same k neurons, one dense SwiGLU
            idx_K = idx_EK[0]
            gate_BLK = jnp.einsum("BLD,DK->BLK", h_BLD, w_gate_DF[:, idx_K])
            up_BLK = jnp.einsum("BLD,DK->BLK", h_BLD, w_up_DF[:, idx_K])
            return jnp.einsum("BLK,KD->BLD", jax.nn.silu(gate_BLK) * up_BLK, w_down_FD[idx_K])
        w_gate_EDK = jnp.take(w_gate_DF, idx_EK, axis=1).transpose(1, 0, 2)
        w_up_EDK = jnp.take(w_up_DF, idx_EK, axis=1).transpose(1, 0, 2)
        w_down_EKD = w_down_FD[idx_EK]
        # one expert per token: the grouped matmuls (custom VJP) compute only each token's own expert
        return moe_mlp(h_BLD, w_gate_EDK, w_up_EDK, w_down_EKD, route.meta,
                       implementation=self.cfg.kernel if self.cfg.stacked_slots else None)


class MoELlama(Llama):
    """The dense Llama with MoE blocks; ``route`` is ``expert_id_BL`` (int, same for every layer)."""

    block_cls = MoEBlock

    def __init__(self, cfg: MoEConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        if cfg.form == "sliced":
            table = np.full((cfg.n_experts,), -1, np.int32)
            table[: cfg.n_slots] = np.arange(cfg.n_slots)
            self.slot_of_expert_E = SlotTable(jnp.asarray(table))

    def slots_of(self, expert_id):
        """Slot ids for expert ids (sliced form); a non-resident expert's slot is clamped to 0."""
        return jnp.maximum(self.slot_of_expert_E[...][expert_id], 0)

    def resident(self, expert_id):
        """Whether each expert id is resident (sliced form; always True for the masked form)."""
        if self.cfg.form == "masked":
            return jnp.ones(jnp.shape(expert_id), bool)
        return self.slot_of_expert_E[...][expert_id] >= 0

    def prepare_route(self, route):
        if route is None:
            raise ReadmeJaxError("the MoE model needs expert ids [B, L] (route=...) for every forward")
        expert_id_BL = jnp.asarray(route, jnp.int32)
        if self.cfg.gathers:  # one grouping by expert per forward (none needed for a single expert)
            E = self.cfg.n_experts
            return GatherRoute(expert_id_BL, make_moe_metadata(expert_id_BL, E, check=False) if E > 1 else None)
        if self.cfg.form == "masked":
            return expert_id_BL
        slot_BL = self.slots_of(expert_id_BL)
        # tokens are grouped by slot once per forward; every layer reuses the grouping
        if self.cfg.stacked_slots:
            return make_moe_metadata(slot_BL, self.cfg.n_slots, check=False)
        return make_slot_plan(slot_BL.reshape(-1), self.cfg.n_slots)


def with_masked_compute(model: MoELlama, compute: str) -> MoELlama:
    """``model`` (merged, e.g. inside a jitted step) switched to compute its masked MLP by ``compute``.

    Needed where a masked model runs with other masks than the k-neuron expert sets it was built for: the
    training teacher runs the backbone dense through all-ones masks, which a gathered MLP would cut to k.
    """
    cfg = getattr(model, "cfg", None)
    if not isinstance(cfg, MoEConfig) or cfg.masked_compute == compute:
        return model
    cfg = dataclasses.replace(cfg, masked_compute=compute)
    model.cfg = cfg
    for block in model.blocks:
        block.cfg = cfg
    return model


def check_resident(cfg: MoEConfig, table_E, expert_ids) -> None:
    """Host-side refusal of routes to experts that hold no slot (``table_E``: the model's slot table)."""
    if cfg.form != "sliced":
        return
    table = np.asarray(table_E)
    ids = np.asarray(expert_ids)
    missing = sorted({int(e) for e in np.unique(ids) if table[int(e)] < 0})
    if missing:
        resident = [int(e) for e in np.flatnonzero(table >= 0)]
        raise ReadmeJaxError(f"tokens are routed to expert(s) {missing}, which hold no slot (resident experts: "
                             f"{resident}); load them into a slot first")
