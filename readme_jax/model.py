"""Dense Llama decoder as Flax NNX modules, used functionally.

Parameters live per layer in ``Block`` modules (no stacking across layers: the unrolled layer loop
lets XLA update each layer's KV cache in place during decoding). The KV cache is an explicit pytree,
a tuple over layers of ``(k_BGSK, v_BGSK)``, passed in and returned, so jitted entry points stay pure
functions of ``(graphdef, state, inputs)`` (see ``readme_jax.functional``).

A block's MLP is a method taking an opaque ``route`` argument (``None`` for the dense model), so
the Read-ME MoE block only overrides ``mlp``. An optional ``probe`` callable sees every layer's MLP
intermediate (the down_proj input) inside the traced forward; activation profiling and oracle routing
use it to reduce those activations on device without materialising them for all layers.

The pre-gating router (``readme_jax.router``) is the same ``Decoder`` with its own blocks' projections,
MLP and head, and the same KV cache (``init_cache``).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from readme_jax import layers
from readme_jax.config import LlamaConfig

# Logical sharding axes of every parameter, by attribute name (used by the training mesh rules).
LOGICAL_AXES = {
    "embed_VD": ("vocab", "embed"),
    "w_head_DV": ("embed", "vocab"),
    "final_norm_D": ("embed",),
    "attn_norm_D": ("embed",),
    "mlp_norm_D": ("embed",),
    "w_q_DHK": ("embed", "heads", "head_dim"),
    "w_k_DGK": ("embed", "kv_heads", "head_dim"),
    "w_v_DGK": ("embed", "kv_heads", "head_dim"),
    "w_o_HKD": ("heads", "head_dim", "embed"),
    "w_gate_DF": ("embed", "mlp"),
    "w_up_DF": ("embed", "mlp"),
    "w_down_FD": ("mlp", "embed"),
}


def _param(rngs: nnx.Rngs, shape, dtype, std: float = 0.02):
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32).astype(dtype))


class Block(nnx.Module):
    """Pre-norm decoder block: x + Attn(RMSNorm(x)), then x + MLP(RMSNorm(x))."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs, layer: int = 0):
        D, H, G, K = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        dt = jnp.dtype(cfg.dtype)
        self.cfg = cfg
        self.attn_norm_D = nnx.Param(jnp.ones((D,), dt))
        self.w_q_DHK = _param(rngs, (D, H, K), dt)
        self.w_k_DGK = _param(rngs, (D, G, K), dt)
        self.w_v_DGK = _param(rngs, (D, G, K), dt)
        self.w_o_HKD = _param(rngs, (H, K, D), dt)
        self.mlp_norm_D = nnx.Param(jnp.ones((D,), dt))
        self.init_mlp(cfg, rngs, layer)

    def init_mlp(self, cfg: LlamaConfig, rngs: nnx.Rngs, layer: int = 0):
        del layer  # every dense layer has the same MLP shape (a MoE block's may differ per layer)
        D, F, dt = cfg.d_model, cfg.d_ff, jnp.dtype(cfg.dtype)
        self.w_gate_DF = _param(rngs, (D, F), dt)
        self.w_up_DF = _param(rngs, (D, F), dt)
        self.w_down_FD = _param(rngs, (F, D), dt)

    def mlp_hidden(self, h_BLD):
        """The SwiGLU intermediate act(gate(h)) * up(h): the input of down_proj, Read-ME's neuron space."""
        gate_BLF = jnp.einsum("BLD,DF->BLF", h_BLD, self.w_gate_DF[...])
        up_BLF = jnp.einsum("BLD,DF->BLF", h_BLD, self.w_up_DF[...])
        return jax.nn.silu(gate_BLF) * up_BLF

    def mlp(self, h_BLD, route, probe=None):
        del route  # the dense MLP uses every neuron
        hidden_BLF = self.mlp_hidden(h_BLD)
        if probe is not None:
            probe(hidden_BLF)
        return jnp.einsum("BLF,FD->BLD", hidden_BLF, self.w_down_FD[...])

    def qkv(self, h_BLD):
        """Query [B, L, H, K], key and value [B, L, G, K] projections, before RoPE."""
        return (jnp.einsum("BLD,DHK->BLHK", h_BLD, self.w_q_DHK[...]),
                jnp.einsum("BLD,DGK->BLGK", h_BLD, self.w_k_DGK[...]),
                jnp.einsum("BLD,DGK->BLGK", h_BLD, self.w_v_DGK[...]))

    def project_out(self, out_BLHK):
        return jnp.einsum("BLHK,HKD->BLD", out_BLHK, self.w_o_HKD[...])

    def attend(self, h_BLD, cos_BLK, sin_BLK, mask_BLS, kv, write_index):
        """Self-attention; with a cache, the new keys/values are written at ``write_index`` first."""
        q_BLHK, k_BLGK, v_BLGK = self.qkv(h_BLD)
        q_BLHK = layers.apply_rope(q_BLHK, cos_BLK, sin_BLK)
        k_BLGK = layers.apply_rope(k_BLGK, cos_BLK, sin_BLK)
        k_BGLK, v_BGLK = k_BLGK.transpose(0, 2, 1, 3), v_BLGK.transpose(0, 2, 1, 3)
        k_BGSK, v_BGSK, new_kv = layers.write_kv(kv, k_BGLK, v_BGLK, write_index)
        out_BLHK = layers.attention(q_BLHK, k_BGSK, v_BGSK, mask_BLS, self.cfg.scale)
        return self.project_out(out_BLHK), new_kv

    def __call__(self, x_BLD, cos_BLK, sin_BLK, mask_BLS, kv=None, write_index=0, route=None, probe=None):
        eps = self.cfg.rms_eps
        attn_BLD, new_kv = self.attend(layers.rms_norm(x_BLD, self.attn_norm_D[...], eps),
                                       cos_BLK, sin_BLK, mask_BLS, kv, write_index)
        x_BLD = x_BLD + attn_BLD
        x_BLD = x_BLD + self.mlp(layers.rms_norm(x_BLD, self.mlp_norm_D[...], eps), route, probe)
        return x_BLD, new_kv


def rematerialised(block, x_BLD, cos_BLK, sin_BLK, mask_BLS, route):
    """One block's cache-less forward whose backward keeps only the block's inputs and recomputes its insides
    (attention scores, MLP intermediates), so a training step holds one block's activations at a time instead
    of every block's.

    Why not ``jax.checkpoint``: it saves the right residuals, but XLA's CPU pipeline drops optimization
    barriers before common-subexpression elimination, which then merges each recomputed block with its forward:
    the compiled temporaries stayed those of every block (tests/train/test_plan.py), 274 GB per device for the
    paper preset's expert step. So the backward recomputes the block from ``x + 0 * g`` (g: the cotangent
    arriving from the block above), a value no compiler can identify with the forward's input, and which orders
    the recomputation after the gradient has reached the block; the optimization barrier does the same where a
    backend keeps it. ``0 * g`` is exactly zero unless g holds inf or NaN, when the gradient is lost anyway.
    """
    graphdef, state = nnx.split(block)

    def run(state, x_BLD, cos_BLK, sin_BLK, mask_BLS, route):
        out_BLD, _ = nnx.merge(graphdef, state)(x_BLD, cos_BLK, sin_BLK, mask_BLS, None, 0, route, None)
        return out_BLD

    @jax.custom_vjp
    def remat_run(*args):
        return run(*args)

    def forward(*args):
        return run(*args), args

    def backward(args, g_BLD):
        args, g_BLD = jax.lax.optimization_barrier((args, g_BLD))
        state, x_BLD, *rest = args
        x_BLD = x_BLD + 0.0 * g_BLD[:1, :1, :1].astype(x_BLD.dtype)
        return jax.vjp(run, state, x_BLD, *rest)[1](g_BLD)

    remat_run.defvjp(forward, backward)
    return remat_run(state, x_BLD, cos_BLK, sin_BLK, mask_BLS, route)


class Decoder(nnx.Module):
    """Embedding, causal blocks over an explicit KV cache, final RMSNorm: what the Llama and the router share.

    A subclass sets ``cfg``, ``embed_VD``, ``blocks`` and ``final_norm_D`` and defines ``inv_freq`` (RoPE)
    and ``head`` (logits).
    """

    def prepare_route(self, route):
        """Hook for models whose per-token route needs one-off preprocessing per forward."""
        return route

    def inv_freq(self):
        raise NotImplementedError

    def head(self, x_BLD):
        raise NotImplementedError

    def hidden(self, tokens_BL, pos_BL, kv_valid_BS, cache=None, write_index=0, route=None, x_BLD=None,
               probe=None, mask_BLS=None, remat=False):
        """Final-norm hidden states [B, L, D] and the updated cache.

        Args:
          tokens_BL: int token ids.
          pos_BL: RoPE positions.
          kv_valid_BS: without a cache S == L and it marks real (non-pad) tokens; with a cache it covers all S
            slots and must already mark the L slots being written.
          cache: None, or a tuple over layers of (k_BGSK, v_BGSK) from ``init_cache``.
          write_index: the cache slot of the first of the L tokens (traced int).
          route: the MoE's expert ids (None for the dense model and the router).
          x_BLD: replaces the token embeddings when given (gradient-based causality tests).
          probe: called with every layer's MLP intermediate (see the module docstring).
          mask_BLS: replaces the causal mask built from ``kv_valid_BS``: packed prompts, where ``write_index`` is
            a ``layers.PackedWrite`` and ``kv_valid_BS`` is unused.
        Returns:
          (x_BLD, cache or None).
        """
        L = tokens_BL.shape[1]
        if x_BLD is None:
            x_BLD = self.embed_VD[...][tokens_BL]
        cos_BLK, sin_BLK = layers.rope_cos_sin(pos_BL, self.inv_freq())
        if mask_BLS is None:
            mask_BLS = layers.causal_mask(write_index + jnp.arange(L), kv_valid_BS)
        route = self.prepare_route(route)
        new_cache = []
        for n, block in enumerate(self.blocks):
            kv = None if cache is None else cache[n]
            if remat and cache is None and probe is None:
                x_BLD = rematerialised(block, x_BLD, cos_BLK, sin_BLK, mask_BLS, route)
            else:
                x_BLD, kv = block(x_BLD, cos_BLK, sin_BLK, mask_BLS, kv, write_index, route, probe)
            new_cache.append(kv)
        x_BLD = layers.rms_norm(x_BLD, self.final_norm_D[...], self.cfg.rms_eps)
        return x_BLD, (None if cache is None else tuple(new_cache))

    def __call__(self, tokens_BL, pos_BL=None, kv_valid_BS=None, route=None, remat=False):
        """Full causal forward without a cache: ``head`` of the final hidden states (fp32).

        ``remat``: rematerialise each block in the backward pass (see ``rematerialised``)."""
        B, L = tokens_BL.shape
        if pos_BL is None:
            pos_BL = jnp.broadcast_to(jnp.arange(L), (B, L))
        if kv_valid_BS is None:
            kv_valid_BS = jnp.ones((B, L), bool)
        x_BLD, _ = self.hidden(tokens_BL, pos_BL, kv_valid_BS, route=route, remat=remat)
        return self.head(x_BLD)


class Llama(Decoder):
    """Token embedding, N blocks, final RMSNorm and the (possibly tied) LM head."""

    block_cls = Block

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        dt = jnp.dtype(cfg.dtype)
        self.cfg = cfg
        self.embed_VD = _param(rngs, (cfg.vocab_size, cfg.d_model), dt)
        self.blocks = nnx.List([self.block_cls(cfg, rngs=rngs, layer=n) for n in range(cfg.n_layers)])
        self.final_norm_D = nnx.Param(jnp.ones((cfg.d_model,), dt))
        if not cfg.tie_embeddings:
            self.w_head_DV = _param(rngs, (cfg.d_model, cfg.vocab_size), dt)

    def inv_freq(self):
        return layers.config_inv_freq(self.cfg)

    def head(self, x_BLD):
        """Logits [B, L, V] in fp32."""
        if self.cfg.tie_embeddings:
            return jnp.einsum("BLD,VD->BLV", x_BLD, self.embed_VD[...], preferred_element_type=jnp.float32)
        return jnp.einsum("BLD,DV->BLV", x_BLD, self.w_head_DV[...], preferred_element_type=jnp.float32)


def init_cache(cfg, batch: int, length: int, dtype=None):
    """An all-zero KV cache: a tuple over layers of (k_BGSK, v_BGSK) (``cfg``: a LlamaConfig or RouterConfig)."""
    dt = jnp.dtype(dtype or cfg.dtype)
    shape = (batch, cfg.n_kv_heads, length, cfg.head_dim)
    return tuple((jnp.zeros(shape, dt), jnp.zeros(shape, dt)) for _ in range(cfg.n_layers))


def abstract_model(cfg: LlamaConfig, model_cls=Llama):
    """(graphdef, abstract state) without allocating or initialising any weight."""
    return nnx.split(nnx.eval_shape(lambda: model_cls(cfg, rngs=nnx.Rngs(0))))
