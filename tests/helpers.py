"""Shared tiny configs and builders for the tests (one compile per shape: reuse these)."""

from readme_jax.config import LlamaConfig


def tiny_config(**overrides) -> LlamaConfig:
    base = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, rope_theta=10000.0,
                rms_eps=1e-5, max_seq_len=128, tie_embeddings=False, eos_ids=(3,), pad_id=0)
    base.update(overrides)
    return LlamaConfig(**base)


def tiny_model(cfg=None, seed: int = 0):
    from flax import nnx

    from readme_jax.model import Llama

    return Llama(cfg or tiny_config(), rngs=nnx.Rngs(seed))


class ByteTokenizer:
    """A hand-computable tokenizer for tests: one id per byte (+4 offset), ids 0..3 special."""

    def __init__(self, eos_id: int = 3, pad_id: int = 0):
        self.eos_ids, self.pad_id, self.bos_id, self.add_bos, self.chat_template = (eos_id,), pad_id, None, False, None

    @property
    def eos_id(self):
        return self.eos_ids[0]

    def encode(self, text, add_special_tokens=False):
        return [b % 93 + 4 for b in text.encode()]

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(str(i) for i in ids)


def tiny_moe_parts(n_experts: int, seed: int = 2):
    """(cfg, dense weights as a numpy pure dict, random domain masks [N, E, F] at keep ratio 0.5)."""
    import numpy as np
    from flax import nnx

    from readme_jax import refactor
    from readme_jax.lm import jax_to_numpy

    cfg = tiny_config()
    pure = jax_to_numpy(nnx.to_pure_dict(nnx.split(tiny_model(cfg, seed=seed))[1]))
    stats = np.random.default_rng(seed + 1).random((n_experts, cfg.n_layers, cfg.d_ff))
    return cfg, pure, refactor.domain_masks(stats, 0.5)
