"""Map HF-named Llama tensors ([out, in] Linear layout) to and from our NNX state.

This is the only place that knows HF parameter names. Both directions are exact (transposes and
reshapes only), which the loader round-trip tests rely on.
"""

from collections.abc import Callable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from readme_jax.config import LlamaConfig
from readme_jax.errors import ReadmeJaxError
from readme_jax.model import Llama, abstract_model


def _block_map(cfg: LlamaConfig) -> dict[str, tuple[str, Callable, Callable]]:
    """Our block param -> (HF suffix, hf_to_ours, ours_to_hf)."""
    D, H, G, K = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    return {
        "attn_norm_D": ("input_layernorm.weight", lambda w: w, lambda w: w),
        "w_q_DHK": ("self_attn.q_proj.weight", lambda w: w.T.reshape(D, H, K), lambda w: w.reshape(D, H * K).T),
        "w_k_DGK": ("self_attn.k_proj.weight", lambda w: w.T.reshape(D, G, K), lambda w: w.reshape(D, G * K).T),
        "w_v_DGK": ("self_attn.v_proj.weight", lambda w: w.T.reshape(D, G, K), lambda w: w.reshape(D, G * K).T),
        "w_o_HKD": ("self_attn.o_proj.weight", lambda w: w.T.reshape(H, K, D), lambda w: w.reshape(H * K, D).T),
        "mlp_norm_D": ("post_attention_layernorm.weight", lambda w: w, lambda w: w),
        "w_gate_DF": ("mlp.gate_proj.weight", lambda w: w.T, lambda w: w.T),
        "w_up_DF": ("mlp.up_proj.weight", lambda w: w.T, lambda w: w.T),
        "w_down_FD": ("mlp.down_proj.weight", lambda w: w.T, lambda w: w.T),
    }


def hf_to_pure(cfg: LlamaConfig, get: Callable[[str], np.ndarray], has: Callable[[str], bool]) -> dict:
    """A pure state dict (numpy, cfg.dtype) from an HF tensor getter; errors name missing tensors."""
    dtype = jnp.dtype(cfg.dtype)

    def fetch(name, shape, fn=lambda w: w):
        if not has(name):
            raise ReadmeJaxError(f"checkpoint is missing tensor {name!r}")
        w = fn(np.asarray(get(name)))
        if tuple(w.shape) != tuple(shape):
            raise ReadmeJaxError(f"tensor {name!r} has shape {tuple(w.shape)}, expected {tuple(shape)} for this config")
        return np.ascontiguousarray(w).astype(dtype)

    _, abstract = abstract_model(cfg)
    shapes = nnx.to_pure_dict(abstract)
    pure = {
        "embed_VD": fetch("model.embed_tokens.weight", shapes["embed_VD"].shape),
        "final_norm_D": fetch("model.norm.weight", shapes["final_norm_D"].shape),
        "blocks": {},
    }
    if not cfg.tie_embeddings:
        pure["w_head_DV"] = fetch("lm_head.weight", shapes["w_head_DV"].shape, lambda w: w.T)
    bmap = _block_map(cfg)
    for n in range(cfg.n_layers):
        pure["blocks"][n] = {
            ours: fetch(f"model.layers.{n}.{suffix}", shapes["blocks"][n][ours].shape, to_ours)
            for ours, (suffix, to_ours, _) in bmap.items()
        }
    return pure


def pure_to_hf(cfg: LlamaConfig, pure: Mapping) -> dict[str, np.ndarray]:
    """HF-named numpy tensors from a dense pure state dict."""
    out = {"model.embed_tokens.weight": np.asarray(pure["embed_VD"]),
           "model.norm.weight": np.asarray(pure["final_norm_D"])}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = np.asarray(pure["w_head_DV"]).T
    for n in range(cfg.n_layers):
        for ours, (suffix, _, to_hf) in _block_map(cfg).items():
            out[f"model.layers.{n}.{suffix}"] = np.ascontiguousarray(to_hf(np.asarray(pure["blocks"][n][ours])))
    return out


def build_model(cfg: LlamaConfig, pure: Mapping, model_cls=Llama):
    """Merge a pure state dict into a model of ``model_cls`` without random initialisation."""
    graphdef, abstract = abstract_model(cfg, model_cls)

    def convert(tree):
        return {k: convert(v) if isinstance(v, Mapping) else jnp.asarray(v) for k, v in tree.items()}

    arrays = convert(pure)
    nnx.replace_by_pure_dict(abstract, arrays)
    return nnx.merge(graphdef, abstract)
