"""Model configuration: one frozen dataclass for a Llama-family decoder.

Built from an HF ``config.json`` (read defensively: transformers 5 moved ``rope_theta`` into
``rope_parameters``) or from GGUF metadata.
"""

import dataclasses
import json
from pathlib import Path
from typing import Any

from readme_jax.errors import ReadmeJaxError

DTYPES = ("float32", "bfloat16")
ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Shapes and numerics of a dense Llama decoder (letters follow the dimension key)."""

    vocab_size: int  # V
    d_model: int  # D
    n_layers: int  # N
    n_heads: int  # H
    n_kv_heads: int  # G
    d_ff: int  # F
    head_dim: int = 0  # K; 0 means d_model // n_heads
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0  # linear / llama3 scaling factor
    rope_low_freq_factor: float = 1.0  # llama3 only
    rope_high_freq_factor: float = 4.0  # llama3 only
    rope_original_max_len: int = 8192  # llama3 only
    rms_eps: float = 1e-5
    max_seq_len: int = 2048
    tie_embeddings: bool = False
    bos_id: int | None = None
    eos_ids: tuple[int, ...] = ()
    pad_id: int = 0
    dtype: str = "float32"  # parameter and activation dtype; softmax/norms run in fp32
    name: str = "llama"

    def __post_init__(self):
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.d_model // max(self.n_heads, 1))
        for field in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
            if getattr(self, field) <= 0:
                raise ReadmeJaxError(f"config: {field}={getattr(self, field)} must be positive")
        if self.n_heads % self.n_kv_heads:
            raise ReadmeJaxError(f"config: n_heads={self.n_heads} not divisible by n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ReadmeJaxError(f"config: head_dim={self.head_dim} must be even for RoPE")
        if self.dtype not in DTYPES:
            raise ReadmeJaxError(f"config: dtype={self.dtype!r} not one of {DTYPES}")
        if self.rope_type not in ROPE_TYPES:
            raise ReadmeJaxError(f"config: rope_type={self.rope_type!r} not supported (supported: {ROPE_TYPES})")
        object.__setattr__(self, "eos_ids", tuple(int(i) for i in self.eos_ids))

    @property
    def scale(self) -> float:
        """Attention score scale 1/sqrt(K) (``RouterConfig.scale`` is the router's)."""
        return self.head_dim ** -0.5

    def replace(self, **changes) -> "LlamaConfig":
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        d, f, k = self.d_model, self.d_ff, self.head_dim
        attn = d * k * (self.n_heads * 2 + self.n_kv_heads * 2)
        per_layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.n_layers * per_layer + d + head

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LlamaConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if "eos_ids" in kwargs:
            kwargs["eos_ids"] = tuple(kwargs["eos_ids"])
        return cls(**kwargs)


def _rope_from_hf(cfg: dict[str, Any]) -> dict[str, Any]:
    """RoPE fields from either the transformers-4 or the transformers-5 layout."""
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    out = {"rope_theta": float(theta), "rope_type": rope_type}
    if rope_type in ("linear", "llama3"):
        out["rope_factor"] = float(params.get("factor", 1.0))
    if rope_type == "llama3":
        out["rope_low_freq_factor"] = float(params.get("low_freq_factor", 1.0))
        out["rope_high_freq_factor"] = float(params.get("high_freq_factor", 4.0))
        out["rope_original_max_len"] = int(params.get("original_max_position_embeddings", 8192))
    return out


def from_hf_config(cfg: dict[str, Any], dtype: str = "float32") -> LlamaConfig:
    """Build a config from the dict of an HF ``config.json`` (Llama architecture)."""
    arch = cfg.get("model_type", "llama")
    if arch not in ("llama", "mistral", "readme_moe"):
        raise ReadmeJaxError(f"config.json: model_type={arch!r} is not a Llama-family model")
    try:
        n_heads = int(cfg["num_attention_heads"])
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        return LlamaConfig(
            vocab_size=int(cfg["vocab_size"]),
            d_model=int(cfg["hidden_size"]),
            n_layers=int(cfg["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
            d_ff=int(cfg["intermediate_size"]),
            head_dim=int(cfg.get("head_dim") or 0),
            rms_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            max_seq_len=int(cfg.get("max_position_embeddings", 2048)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            bos_id=cfg.get("bos_token_id"),
            eos_ids=eos_ids,
            pad_id=int(cfg.get("pad_token_id") or 0),
            dtype=dtype,
            name=str(cfg.get("_name_or_path") or arch),
            **_rope_from_hf(cfg),
        )
    except KeyError as exc:
        raise ReadmeJaxError(f"config.json: missing field {exc.args[0]!r}") from None


def load_hf_config(path: Path, dtype: str = "float32") -> LlamaConfig:
    try:
        return from_hf_config(json.loads(Path(path).read_text()), dtype=dtype)
    except json.JSONDecodeError as exc:
        raise ReadmeJaxError(f"{path}: not valid JSON ({exc})") from None


def to_hf_config(cfg: LlamaConfig) -> dict[str, Any]:
    """The HF ``config.json`` dict for a dense config (transformers-5 layout)."""
    rope = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta}
    if cfg.rope_type in ("linear", "llama3"):
        rope["factor"] = cfg.rope_factor
    if cfg.rope_type == "llama3":
        rope.update(low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor,
                    original_max_position_embeddings=cfg.rope_original_max_len)
    eos = list(cfg.eos_ids)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.d_ff,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_eps,
        "max_position_embeddings": cfg.max_seq_len,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": cfg.bos_id,
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "pad_token_id": cfg.pad_id,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": rope,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": cfg.dtype,
    }
