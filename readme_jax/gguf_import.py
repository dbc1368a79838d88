"""Read a llama.cpp GGUF file: config from metadata, HF-named float tensors, tokenizer.

Supported tensor types: F32, F16, BF16, Q8_0, Q4_0, Q4_1 (dequantized with the ``gguf`` package);
anything else is an error naming the type. llama.cpp's converter permutes the rows of the q/k
projections for its own RoPE layout; ``unpermute_qk`` undoes it so that the HF rotate-half RoPE applies.
"""

from pathlib import Path

import numpy as np

from readme_jax.config import LlamaConfig
from readme_jax.errors import ReadmeJaxError

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")
GGUF_MAGIC = b"GGUF"

# GGUF tensor name -> HF name (layer tensors use "blk.{n}." -> "model.layers.{n}.")
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF [heads*K, in] rows -> llama.cpp's interleaved-pair order (what its converter writes)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of ``permute_qk``: back to HF's rotate-half layout."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_to_hf_name(name: str) -> str | None:
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{parts[3]}"
    return None


class GGUFFile:
    """An opened GGUF checkpoint (memory-mapped; tensors are dequantized on request)."""

    def __init__(self, path: Path):
        import gguf

        self.path = Path(path)
        if not self.path.is_file():
            raise ReadmeJaxError(f"{self.path}: no such GGUF file")
        with open(self.path, "rb") as fh:
            if fh.read(4) != GGUF_MAGIC:
                raise ReadmeJaxError(f"{self.path}: not a GGUF file (bad magic bytes)")
        try:
            self.reader = gguf.GGUFReader(str(self.path))
        except Exception as exc:  # gguf raises assorted errors on a cut file
            raise ReadmeJaxError(f"{self.path}: truncated or corrupt GGUF file ({type(exc).__name__}: {exc})") from None
        self._tensors = {t.name: t for t in self.reader.tensors}
        self._check_complete()

    def _check_complete(self):
        """A truncated file can still parse its header: make sure every tensor's bytes are there."""
        size = self.path.stat().st_size
        for t in self.reader.tensors:
            if t.data_offset + t.n_bytes > size:
                raise ReadmeJaxError(f"{self.path}: truncated GGUF file (tensor {t.name!r} extends past the end)")

    def field(self, key: str, default=None):
        f = self.reader.fields.get(key)
        return default if f is None else f.contents()

    def config(self, dtype: str = "float32") -> LlamaConfig:
        arch = self.field("general.architecture")
        if arch != "llama":
            raise ReadmeJaxError(f"{self.path}: general.architecture={arch!r}; only 'llama' is supported")
        a = "llama."
        try:
            n_heads = int(self.field(a + "attention.head_count"))
            d_model = int(self.field(a + "embedding_length"))
            tokens = self.reader.fields["tokenizer.ggml.tokens"]
            vocab = int(self.field(a + "vocab_size", len(tokens.data)))
            eos = self.field("tokenizer.ggml.eos_token_id")
            return LlamaConfig(
                vocab_size=vocab, d_model=d_model, n_layers=int(self.field(a + "block_count")),
                n_heads=n_heads, n_kv_heads=int(self.field(a + "attention.head_count_kv", n_heads)),
                d_ff=int(self.field(a + "feed_forward_length")),
                head_dim=int(self.field(a + "rope.dimension_count", d_model // n_heads)),
                rope_theta=float(self.field(a + "rope.freq_base", 10000.0)),
                rms_eps=float(self.field(a + "attention.layer_norm_rms_epsilon", 1e-5)),
                max_seq_len=int(self.field(a + "context_length", 2048)),
                tie_embeddings="output.weight" not in self._tensors,
                bos_id=self.field("tokenizer.ggml.bos_token_id"),
                eos_ids=() if eos is None else (int(eos),),
                pad_id=int(self.field("tokenizer.ggml.padding_token_id", 0)),
                dtype=dtype, name=str(self.field("general.name", self.path.stem)),
            )
        except (KeyError, TypeError) as exc:
            raise ReadmeJaxError(f"{self.path}: GGUF metadata is missing a llama field ({exc})") from None

    def hf_names(self) -> dict[str, str]:
        return {hf: name for name in self._tensors if (hf := gguf_to_hf_name(name))}

    def tensor(self, gguf_name: str, n_heads: int, n_kv_heads: int) -> np.ndarray:
        """One tensor as float32 in HF [out, in] layout, with q/k un-permuted."""
        import gguf

        t = self._tensors[gguf_name]
        kind = t.tensor_type.name
        if kind not in SUPPORTED_TYPES:
            raise ReadmeJaxError(f"{self.path}: tensor {gguf_name!r} has unsupported type {kind} "
                                 f"(supported: {', '.join(SUPPORTED_TYPES)})")
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)])  # GGUF lists dims innermost-first
        if gguf_name.endswith("attn_q.weight"):
            w = unpermute_qk(w, n_heads)
        elif gguf_name.endswith("attn_k.weight"):
            w = unpermute_qk(w, n_kv_heads)
        return w


def load_gguf(path: Path, dtype: str = "float32"):
    """(config, HF-named getter, has) for ``readme_jax.weights.hf_to_pure``."""
    f = GGUFFile(path)
    cfg = f.config(dtype)
    names = f.hf_names()
    return f, cfg, (lambda hf: f.tensor(names[hf], cfg.n_heads, cfg.n_kv_heads)), (lambda hf: hf in names)
