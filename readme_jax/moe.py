"""Read-ME mixture of experts carved out of a dense Llama's MLP neurons, in two forms.

One config (``MoEConfig``) serves both forms; expert ids ``expert_id_BL`` are given once per forward
and used by every layer (pre-gating: the router runs before the backbone).

* masked-dense (``form="masked"``, for training): the dense weights plus a fixed per-layer neuron
  mask ``mask_EF``; token t keeps neurons ``mask_EF[expert_id[t]]`` of the SwiGLU intermediate.
  Neurons shared by several experts stay weight-tied, as in the reference code.
* sliced (``form="sliced"``, for serving and kernels): each expert's X neurons gathered into stacked
  ``w_gate_EDX``, ``w_up_EDX``, ``w_down_EXD`` (the permanent neurons fused into every expert), run
  by the grouped-matmul kernels with tokens sorted by expert once per forward.

Expert e's neuron set is its domain's top-k set, so every expert has exactly X = k neurons and a
token's active set is ``permanent ∪ specific_e`` = domain set e.
"""

import dataclasses

import jax.numpy as jnp
from flax import nnx

from readme_jax.config import LlamaConfig
from readme_jax.errors import ReadmeJaxError
from readme_jax.model import Block, Llama, _param

FORMS = ("masked", "sliced")


@dataclasses.dataclass(frozen=True)
class MoEConfig(LlamaConfig):
    """A dense Llama config plus the Read-ME fields."""

    n_experts: int = 1  # E
    expert_width: int = 0  # X: neurons per expert (the domain top-k); 0 means d_ff
    form: str = "masked"
    keep_ratio: float = 1.0
    domains: tuple[str, ...] = ()
    kernel: str | None = None  # kernels.gmm implementation for the sliced form (None: best available)

    def __post_init__(self):
        super().__post_init__()
        if self.expert_width == 0:
            object.__setattr__(self, "expert_width", self.d_ff)
        object.__setattr__(self, "domains", tuple(self.domains))
        if self.n_experts < 1:
            raise ReadmeJaxError(f"config: n_experts={self.n_experts} must be >= 1")
        if not 0 < self.expert_width <= self.d_ff:
            raise ReadmeJaxError(f"config: expert_width={self.expert_width} must be in (0, d_ff={self.d_ff}]")
        if not 0 < self.keep_ratio <= 1:
            raise ReadmeJaxError(f"keep ratio {self.keep_ratio} must be in (0, 1]")
        if self.form not in FORMS:
            raise ReadmeJaxError(f"config: form={self.form!r} not one of {FORMS}")
        if self.domains and len(self.domains) != self.n_experts:
            raise ReadmeJaxError(f"config: {len(self.domains)} domains for n_experts={self.n_experts}")

    @classmethod
    def from_dense(cls, cfg: LlamaConfig, **fields) -> "MoEConfig":
        base = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(LlamaConfig)}
        return cls(**base, **fields)

    def dense(self) -> LlamaConfig:
        return LlamaConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LlamaConfig)})

    def active_params(self) -> int:
        """Parameters touched by one token (one expert)."""
        return self.dense().replace(d_ff=self.expert_width).num_params()

    def total_params(self, duplicated: bool = True) -> int:
        """Stored parameters: experts as separate slices (``duplicated``, the paper's count) or unique."""
        if not duplicated:
            return self.dense().num_params()
        mlp_dense = 3 * self.d_model * self.d_ff * self.n_layers
        return self.dense().num_params() - mlp_dense + self.n_experts * 3 * self.d_model * self.expert_width * self.n_layers


class NeuronMask(nnx.Variable):
    """A fixed neuron selection (the masked form's mask_EF): part of the model state, never trained."""


class MoEBlock(Block):
    def init_mlp(self, cfg: MoEConfig, rngs: nnx.Rngs):
        E, X, D, F, dt = cfg.n_experts, cfg.expert_width, cfg.d_model, cfg.d_ff, jnp.dtype(cfg.dtype)
        if cfg.form == "masked":
            super().init_mlp(cfg, rngs)
            self.mask_EF = NeuronMask(jnp.ones((E, F), bool).at[:, X:].set(False))
        else:
            self.w_gate_EDX = _param(rngs, (E, D, X), dt)
            self.w_up_EDX = _param(rngs, (E, D, X), dt)
            self.w_down_EXD = _param(rngs, (E, X, D), dt)

    def mlp(self, h_BLD, route, probe=None):
        if self.cfg.form == "masked":
            hidden_BLF = self.mlp_hidden(h_BLD) * self.mask_EF[...][route].astype(h_BLD.dtype)
            if probe is not None:
                probe(hidden_BLF)
            return jnp.einsum("BLF,FD->BLD", hidden_BLF, self.w_down_FD[...])
        if probe is not None:
            raise ReadmeJaxError("activation probes need the masked form of the MoE model")
        from kernels.gmm import moe_mlp

        return moe_mlp(h_BLD, self.w_gate_EDX[...], self.w_up_EDX[...], self.w_down_EXD[...], route,
                       implementation=self.cfg.kernel)


class MoELlama(Llama):
    """The dense Llama with MoE blocks; ``route`` is ``expert_id_BL`` (int, same for every layer)."""

    block_cls = MoEBlock

    def prepare_route(self, route):
        if route is None:
            raise ReadmeJaxError("the MoE model needs expert ids [B, L] (route=...) for every forward")
        expert_id_BL = jnp.asarray(route, jnp.int32)
        if self.cfg.form == "masked":
            return expert_id_BL
        from kernels.gmm import make_moe_metadata

        # sort tokens by expert once per forward; every layer reuses the permutation
        return make_moe_metadata(expert_id_BL, self.cfg.n_experts, check=False)
