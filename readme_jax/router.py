"""Read-ME's pre-gating router (paper §2.3-2.4): token ids in, expert logits out.

One small causal Transformer G(x<=t) with its own embedding runs *before* the backbone; the argmax of its
logits picks the one expert that every layer uses for token t. It sees token ids only, so queued requests
can be pre-gated ahead of the backbone, and with its own KV cache newly generated tokens are routed one step
at a time (the reference code recomputes the whole prefix every step instead).

1. x = Emb(ids): the embedding starts as the first ``d_model`` columns of the LLM's (``init_router``).
2. Per block: x += O(Attn(RMSNorm x)) (causal, RoPE), then x += MLP(RMSNorm x).
3. logits_BLE = head(RMSNorm x), in fp32.

Two MLP forms (``RouterConfig.mlp``): ``"silu"`` is the reference code's proj_2(silu(proj_1 x)) and
``"swiglu"`` the paper's gated down(silu(gate x) * up x). The SiLU form keeps the up/down names
(proj_1 = up, proj_2 = down), so the two forms differ only by the gate, as data rather than a branch.

Cost: ``router_flops_per_token`` / ``backbone_flops_per_token`` count matmul FLOPs (projections, attention
over the context, output head; the embedding lookup is free), ``measure_time_ratio`` times both jitted
forwards, and ``RouterConfig.for_backbone`` picks the largest Table 1-shaped router within a 2% FLOP budget.
``python -m readme_jax.router`` prints the parameter count and both ratios for the default model.
"""

import dataclasses
import time
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from readme_jax import layers
from readme_jax.config import DTYPES, LlamaConfig
from readme_jax.errors import ReadmeJaxError
from readme_jax.model import Block, Decoder

MLP_KINDS = ("silu", "swiglu")
ATTN_SCALES = ("sqrt", "none")
COST_BUDGET = 0.02  # router cost per token as a fraction of the backbone's
CANDIDATE_WIDTHS = (512, 256, 128, 64)  # for_backbone's search, largest first; 512 is Table 1's width
PAPER_N_EXPERTS = 7  # RedPajama's 7 sub-domains


@dataclasses.dataclass(frozen=True, slots=True)
class RouterConfig:
    """Shapes and numerics of the router. Defaults are the reference code's design (Table 1 + code details).

    ``d_model`` is both the embedding and the feature width (the reference adds the embedding residually to
    the attention output, so they must be equal). ``bias`` puts biases on every linear map (q/k/v/o, MLP,
    output head), as the reference's ``nn.Linear(..., bias=True)`` layers do. ``attn_scale="none"`` is the
    reference's unscaled q.k (``--attn_normalizer 1``); ``"sqrt"`` divides by sqrt(head_dim).
    """

    vocab_size: int  # V
    n_experts: int  # E
    d_model: int = 512  # D
    n_layers: int = 1  # N
    n_heads: int = 4  # H (no GQA: one KV head per query head)
    d_ff: int = 512  # F
    mlp: str = "silu"
    bias: bool = True
    attn_scale: str = "none"
    rope_theta: float = 10000.0
    rms_eps: float = 1e-6
    max_seq_len: int = 4096
    dtype: str = "float32"

    def __post_init__(self):
        for field in ("vocab_size", "n_experts", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            if getattr(self, field) <= 0:
                raise ReadmeJaxError(f"router config: {field}={getattr(self, field)} must be positive")
        if self.d_model % self.n_heads:
            raise ReadmeJaxError(f"router config: d_model={self.d_model} not divisible by n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise ReadmeJaxError(f"router config: head_dim={self.head_dim} (d_model / n_heads) must be even for RoPE")
        if self.mlp not in MLP_KINDS:
            raise ReadmeJaxError(f"router config: mlp={self.mlp!r} not one of {MLP_KINDS}")
        if self.attn_scale not in ATTN_SCALES:
            raise ReadmeJaxError(f"router config: attn_scale={self.attn_scale!r} not one of {ATTN_SCALES}")
        if self.dtype not in DTYPES:
            raise ReadmeJaxError(f"router config: dtype={self.dtype!r} not one of {DTYPES}")
        if self.rope_theta <= 0 or self.rms_eps <= 0:
            raise ReadmeJaxError(f"router config: rope_theta={self.rope_theta} and rms_eps={self.rms_eps} must be > 0")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def scale(self) -> float:
        return self.head_dim ** -0.5 if self.attn_scale == "sqrt" else 1.0

    @property
    def n_kv_heads(self) -> int:
        """G == H: one KV head per query head (so ``readme_jax.model.init_cache`` serves the router too)."""
        return self.n_heads

    @property
    def n_mlp_mats(self) -> int:
        return 2 if self.mlp == "silu" else 3

    def replace(self, **changes) -> "RouterConfig":
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count from the shapes (equals the module's; the embedding is most of it)."""
        D, F, E, b = self.d_model, self.d_ff, self.n_experts, int(self.bias)
        attn = 4 * D * D + b * 4 * D
        mlp = self.n_mlp_mats * D * F + b * ((self.n_mlp_mats - 1) * F + D)
        per_layer = attn + mlp + 2 * D  # + the two RMSNorm weights
        return self.vocab_size * D + self.n_layers * per_layer + D + D * E + b * E

    @classmethod
    def paper(cls, **overrides) -> "RouterConfig":
        """Table 1 as the reference code builds it: 17,965,063 parameters (paper: "18.0 M")."""
        return cls(**{"vocab_size": 32000, "n_experts": PAPER_N_EXPERTS, "max_seq_len": 4096, **overrides})

    @classmethod
    def for_backbone(cls, llama_cfg: LlamaConfig, n_experts: int = PAPER_N_EXPERTS, *,
                     budget: float = COST_BUDGET, **overrides) -> "RouterConfig":
        """The default router for a backbone: Table 1's shape (4 heads, d_ff = d_model) at the largest width in
        ``CANDIDATE_WIDTHS`` that fits the LLM embedding (whose first columns initialise the router's) and
        costs at most ``budget`` of the backbone's FLOPs per token at every context length up to
        ``max_seq_len``. The ratio is monotone in the context, so checking both ends covers every length.
        ``d_model`` in ``overrides`` skips the search (no budget check); other overrides apply to every
        candidate. The RoPE base is the backbone's ``rope_theta`` unless overridden: the reference code builds
        the router's rotary embedding from the backbone's config.
        """
        def make(d: int) -> "RouterConfig":
            return cls(**{"vocab_size": llama_cfg.vocab_size, "n_experts": n_experts, "d_model": d, "d_ff": d,
                          "max_seq_len": llama_cfg.max_seq_len, "rope_theta": llama_cfg.rope_theta, **overrides})

        if "d_model" in overrides:
            return make(overrides.pop("d_model"))
        for d in CANDIDATE_WIDTHS:
            cfg = make(d)
            ends = (0, llama_cfg.max_seq_len)
            if d <= llama_cfg.d_model and max(flop_ratio(cfg, llama_cfg, c) for c in ends) <= budget:
                return cfg
        raise ReadmeJaxError(f"no router width in {CANDIDATE_WIDTHS} fits d_model={llama_cfg.d_model} "
                             f"within {budget=:.2%} of the backbone's FLOPs")


def _linear(rngs: nnx.Rngs, shape, fan_in: int, dtype):
    # torch nn.Linear's default init (kaiming_uniform_ with a=sqrt(5)), which the reference intends.
    bound = fan_in ** -0.5
    return nnx.Param(jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound).astype(dtype))


def _bias(cfg: RouterConfig, shape, dtype):
    # Zero-initialised; None (no parameter at all) when the config has no biases.
    return nnx.Param(jnp.zeros(shape, dtype)) if cfg.bias else None


def _plus(y, b):
    if b is None:
        return y
    b = b[...]
    return y + b[(None,) * (y.ndim - b.ndim)]  # explicit leading axes: no implicit rank promotion


class RouterBlock(Block):
    """The decoder block with the router's parameters: biases, one KV head per query head, two MLP forms.

    The block structure (pre-norm residuals, RoPE, cached attention) is ``readme_jax.model.Block``'s; only
    the projections and the MLP differ.
    """

    def __init__(self, cfg: RouterConfig, *, rngs: nnx.Rngs):
        D, H, K, F = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_ff
        dt = jnp.dtype(cfg.dtype)
        self.cfg = cfg
        self.attn_norm_D = nnx.Param(jnp.ones((D,), dt))
        self.w_q_DHK, self.b_q_HK = _linear(rngs, (D, H, K), D, dt), _bias(cfg, (H, K), dt)
        self.w_k_DHK, self.b_k_HK = _linear(rngs, (D, H, K), D, dt), _bias(cfg, (H, K), dt)
        self.w_v_DHK, self.b_v_HK = _linear(rngs, (D, H, K), D, dt), _bias(cfg, (H, K), dt)
        self.w_o_HKD, self.b_o_D = _linear(rngs, (H, K, D), H * K, dt), _bias(cfg, (D,), dt)
        self.mlp_norm_D = nnx.Param(jnp.ones((D,), dt))
        gated = cfg.mlp == "swiglu"
        self.w_gate_DF = _linear(rngs, (D, F), D, dt) if gated else None
        self.b_gate_F = _bias(cfg, (F,), dt) if gated else None
        self.w_up_DF, self.b_up_F = _linear(rngs, (D, F), D, dt), _bias(cfg, (F,), dt)
        self.w_down_FD, self.b_down_D = _linear(rngs, (F, D), F, dt), _bias(cfg, (D,), dt)

    def qkv(self, h_BLD):
        """Biased projections (RoPE comes after the bias, as Linear-then-RoPE does); G == H."""
        return (_plus(jnp.einsum("BLD,DHK->BLHK", h_BLD, self.w_q_DHK[...]), self.b_q_HK),
                _plus(jnp.einsum("BLD,DHK->BLHK", h_BLD, self.w_k_DHK[...]), self.b_k_HK),
                _plus(jnp.einsum("BLD,DHK->BLHK", h_BLD, self.w_v_DHK[...]), self.b_v_HK))

    def project_out(self, out_BLHK):
        return _plus(jnp.einsum("BLHK,HKD->BLD", out_BLHK, self.w_o_HKD[...]), self.b_o_D)

    def mlp(self, h_BLD, route=None, probe=None):
        del route, probe  # one dense MLP for every token, never profiled
        up_BLF = _plus(jnp.einsum("BLD,DF->BLF", h_BLD, self.w_up_DF[...]), self.b_up_F)
        if self.w_gate_DF is None:
            act_BLF = jax.nn.silu(up_BLF)
        else:
            act_BLF = jax.nn.silu(_plus(jnp.einsum("BLD,DF->BLF", h_BLD, self.w_gate_DF[...]), self.b_gate_F)) * up_BLF
        return _plus(jnp.einsum("BLF,FD->BLD", act_BLF, self.w_down_FD[...]), self.b_down_D)


class Router(Decoder):
    """Embedding, ``n_layers`` causal blocks, final RMSNorm and the expert head ``w_router_out_DE``.

    ``hidden``, ``__call__`` and the KV cache (``readme_jax.model.init_cache``) are the Llama's.
    """

    def __init__(self, cfg: RouterConfig, *, rngs: nnx.Rngs):
        dt = jnp.dtype(cfg.dtype)
        self.cfg = cfg
        self.embed_VD = nnx.Param((0.02 * jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.d_model))).astype(dt))
        self.blocks = nnx.List([RouterBlock(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
        self.final_norm_D = nnx.Param(jnp.ones((cfg.d_model,), dt))
        self.w_router_out_DE = _linear(rngs, (cfg.d_model, cfg.n_experts), cfg.d_model, dt)
        self.b_router_out_E = _bias(cfg, (cfg.n_experts,), dt)

    def inv_freq(self):
        return layers.rope_inv_freq(self.cfg.head_dim, self.cfg.rope_theta)

    def head(self, x_BLD):
        """Expert logits [B, L, E] in fp32."""
        logits_BLE = jnp.einsum("BLD,DE->BLE", x_BLD, self.w_router_out_DE[...], preferred_element_type=jnp.float32)
        return _plus(logits_BLE, self.b_router_out_E)


def init_router(cfg: RouterConfig, llm_embed_VD=None, *, rngs: nnx.Rngs) -> Router:
    """A router whose embedding is a copy of the first ``d_model`` columns of ``llm_embed_VD`` (when given).

    The copy is explicit (a new buffer) so that donating or updating the LLM state never touches it; the
    reference's intended init (paper §2.3) could be silently overridden by HF's fast init.
    """
    router = Router(cfg, rngs=rngs)
    if llm_embed_VD is None:
        return router
    llm_embed_VD = llm_embed_VD[...] if isinstance(llm_embed_VD, nnx.Variable) else llm_embed_VD
    if llm_embed_VD.ndim != 2 or llm_embed_VD.shape[0] != cfg.vocab_size:
        raise ReadmeJaxError(f"LLM embedding has shape {tuple(llm_embed_VD.shape)}; the router needs "
                             f"[vocab_size={cfg.vocab_size}, >= d_model={cfg.d_model}]")
    if cfg.d_model > llm_embed_VD.shape[1]:
        raise ReadmeJaxError(f"router d_model={cfg.d_model} exceeds the LLM embedding width {llm_embed_VD.shape[1]}")
    router.embed_VD[...] = jnp.array(llm_embed_VD[:, :cfg.d_model], dtype=jnp.dtype(cfg.dtype), copy=True)
    return router


@partial(jax.jit, static_argnums=0)
def route(graphdef, state, tokens_BL, pos_BL=None, kv_valid_BS=None, mask_BLS=None):
    """Jitted full causal forward (pre-gating a batch of prompts, left-padded or not). ``mask_BLS`` (with
    ``pos_BL``) replaces the causal mask: packed prefix trees (``readme_jax.tasks.score``).

    Returns:
      expert logits_BLE in fp32; ``argmax(-1)`` gives expert_id_BL.
    """
    router = nnx.merge(graphdef, state)
    if mask_BLS is None:
        return router(tokens_BL, pos_BL, kv_valid_BS)
    x_BLD, _ = router.hidden(tokens_BL, pos_BL, None, mask_BLS=mask_BLS)
    return router.head(x_BLD)


def router_flops_per_token(cfg: RouterConfig, context_len: int) -> int:
    """Matmul FLOPs to route one token that attends over ``context_len`` keys (the embedding lookup is free)."""
    D = cfg.d_model
    per_layer = 4 * D * D + cfg.n_mlp_mats * D * cfg.d_ff + 2 * D * context_len  # q/k/v/o, MLP, q.k and p.v
    return 2 * (cfg.n_layers * per_layer + D * cfg.n_experts)


def backbone_flops_per_token(llama_cfg: LlamaConfig, context_len: int, active_d_ff: int | None = None) -> int:
    """Matmul FLOPs of one backbone token over ``context_len`` keys, LM head included.

    ``active_d_ff`` replaces the dense MLP width by the MLP width a token actually uses (Read-ME's expert
    width X, with the shared slice fused in), for the refactored MoE backbone.
    """
    c = llama_cfg
    F = c.d_ff if active_d_ff is None else active_d_ff
    per_layer = (2 * c.d_model * c.n_heads * c.head_dim + 2 * c.d_model * c.n_kv_heads * c.head_dim
                 + 3 * c.d_model * F + 2 * c.n_heads * c.head_dim * context_len)
    return 2 * (c.n_layers * per_layer + c.d_model * c.vocab_size)


def flop_ratio(cfg: RouterConfig, llama_cfg: LlamaConfig, context_len: int, active_d_ff: int | None = None) -> float:
    """Router FLOPs per token as a fraction of the backbone's at the same context length."""
    return router_flops_per_token(cfg, context_len) / backbone_flops_per_token(llama_cfg, context_len, active_d_ff)


def _best_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)  # min: the least disturbed run on a shared machine


def measure_time_ratio(router: Router, backbone: nnx.Module, tokens_BL, repeats: int = 5) -> dict:
    """Wall-clock of the jitted router forward over the jitted backbone forward on the same tokens.

    Returns:
      {"router_s", "backbone_s", "ratio", "device"}: best-of-``repeats`` seconds per call (router: best of
      ``10 * repeats``).
    """
    from readme_jax import functional

    router_gd, router_state = nnx.split(router)
    backbone_gd, backbone_state = nnx.split(backbone)
    tokens_BL = jnp.asarray(tokens_BL, jnp.int32)
    # The router costs ~1% of the backbone, so sampling it 10x as often is cheap and steadies its minimum.
    router_s = _best_time(lambda: route(router_gd, router_state, tokens_BL), 10 * repeats)
    backbone_s = _best_time(lambda: functional.forward(backbone_gd, backbone_state, tokens_BL), repeats)
    return {"router_s": router_s, "backbone_s": backbone_s, "ratio": router_s / backbone_s,
            "device": str(jax.devices()[0].device_kind)}


def report(spec: str = "default", n_experts: int = PAPER_N_EXPERTS, batch: int = 1, length: int = 512,
           repeats: int = 3) -> str:
    """Parameter count and cost ratios of the default router for the model ``spec`` (loads the model).

    The timing runs the full backbone forward 1 + ``repeats`` times: about 6 s per call for SmolLM2-135M at
    [1, 512] on a 2-core CPU, so keep ``batch * length`` small there.
    """
    import numpy as np

    import readme_jax

    lm = readme_jax.load(spec)
    cfg = RouterConfig.for_backbone(lm.cfg, n_experts)
    router = init_router(cfg, lm.state["embed_VD"], rngs=nnx.Rngs(0))
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(router, nnx.Param)))
    lines = [f"backbone {lm.cfg.name}: {lm.cfg.num_params():,} params",
             f"router {cfg}", f"router params: {n_params:,} (embedding {cfg.vocab_size * cfg.d_model:,})"]
    for ctx in sorted({0, length // 2, length, lm.cfg.max_seq_len}):
        lines.append(f"FLOPs/token at context {ctx}: router {router_flops_per_token(cfg, ctx):,} / backbone "
                     f"{backbone_flops_per_token(lm.cfg, ctx):,} = {flop_ratio(cfg, lm.cfg, ctx):.3%}")
    tokens_BL = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, length))
    t = measure_time_ratio(router, lm.model, tokens_BL, repeats)
    lines.append(f"measured forward [B={batch}, L={length}] on {t['device']}: router {t['router_s'] * 1e3:.2f} ms / "
                 f"backbone {t['backbone_s'] * 1e3:.2f} ms = {t['ratio']:.3%}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
