"""Loaders: HF safetensors folders and GGUF files written by the tests themselves."""

import json

import gguf
import numpy as np
import pytest
from flax import nnx
from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers
from tokenizers.pre_tokenizers import ByteLevel

import readme_jax
from readme_jax import weights
from readme_jax.errors import ReadmeJaxError
from readme_jax.gguf_import import permute_qk, unpermute_qk
from readme_jax.hf_import import save_hf
from readme_jax.lm import jax_to_numpy
from readme_jax.tokenizer import Tokenizer
from tests.helpers import tiny_config, tiny_model

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_level_vocab():
    """256 byte symbols, three specials and one merge ("h e")."""
    alphabet = sorted(ByteLevel.alphabet())
    tokens = alphabet + SPECIALS + ["he"]
    return tokens, ["h e"]


def tiny_tokenizer() -> Tokenizer:
    tokens, merges = byte_level_vocab()
    tk = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                                merges=[tuple(m.split(" ")) for m in merges]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return Tokenizer(tk, eos_ids=(tokens.index("<|im_end|>"),), pad_id=tokens.index("<|endoftext|>"),
                     chat_template="{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                                   "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                                   "{% endif %}")


VOCAB = len(byte_level_vocab()[0])


@pytest.fixture(scope="module")
def dense():
    cfg = tiny_config(vocab_size=VOCAB, eos_ids=(258,), pad_id=256)
    model = tiny_model(cfg, seed=7)
    pure = jax_to_numpy(nnx.to_pure_dict(nnx.split(model)[1]))
    return cfg, model, pure


def test_qk_permutation_round_trip():
    w = np.arange(6 * 4 * 5, dtype=np.float32).reshape(24, 5)
    assert not np.array_equal(permute_qk(w, 3), w)
    np.testing.assert_array_equal(unpermute_qk(permute_qk(w, 3), 3), w)


@pytest.mark.parametrize("shard_bytes", [1 << 30, 20_000])
def test_hf_folder_round_trip(tmp_path, dense, shard_bytes):
    cfg, model, pure = dense
    folder = save_hf(tmp_path / "ckpt", cfg, weights.pure_to_hf(cfg, pure), tokenizer=tiny_tokenizer(),
                     shard_bytes=shard_bytes)
    sharded = (folder / "model.safetensors.index.json").exists()
    assert sharded == (shard_bytes < 1 << 20)
    lm = readme_jax.load(str(folder))
    ids = np.array([[5, 9, 100, 200, 17]])
    np.testing.assert_allclose(lm.logits(ids), np.asarray(model(ids)), atol=1e-6)
    assert lm.tokenizer.decode(lm.tokenizer.encode("hello <|im_end|>")) == "hello <|im_end|>"
    assert lm.eos_ids[0] == 258


def test_hf_folder_bad_inputs(tmp_path, dense):
    cfg, _, pure = dense
    with pytest.raises(ReadmeJaxError, match="no such file or folder"):
        readme_jax.load(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReadmeJaxError, match="not a checkpoint"):
        readme_jax.load(str(tmp_path / "empty"))
    folder = save_hf(tmp_path / "ok", cfg, weights.pure_to_hf(cfg, pure), tokenizer=tiny_tokenizer())
    st = folder / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReadmeJaxError, match="truncated or corrupt safetensors"):
        readme_jax.load(str(folder))
    folder = save_hf(tmp_path / "partial", cfg, {k: v for k, v in weights.pure_to_hf(cfg, pure).items()
                                                 if "layers.1.mlp.up_proj" not in k}, tokenizer=tiny_tokenizer())
    with pytest.raises(ReadmeJaxError, match="missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        readme_jax.load(str(folder))
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ReadmeJaxError, match="not valid JSON"):
        readme_jax.load(str(folder))


def test_config_reads_both_rope_layouts():
    from readme_jax.config import from_hf_config

    base = dict(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    old = from_hf_config({**base, "rope_theta": 5e5})
    new = from_hf_config({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}})
    assert old.rope_theta == new.rope_theta == 5e5
    with pytest.raises(ReadmeJaxError, match="missing field 'vocab_size'"):
        from_hf_config({k: v for k, v in base.items() if k != "vocab_size"})


def write_gguf(path, cfg, hf, qtypes: dict[str, str] | None = None):
    """A llama GGUF as llama.cpp's converter would write it (q/k rows permuted)."""
    qtypes = qtypes or {}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.n_layers)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.d_model)
    writer.add_feed_forward_length(cfg.d_ff)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_eps)
    tokens, merges = byte_level_vocab()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_eos_token_id(258)
    writer.add_bos_token_id(257)
    writer.add_pad_token_id(256)
    names = {v: k for k, v in {
        "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"}.items()}
    stored = {}
    for hf_name, w in hf.items():
        if hf_name in names:
            name = names[hf_name]
        else:
            n, rest = hf_name.split(".")[2], ".".join(hf_name.split(".")[3:-1])
            short = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                     "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                     "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                     "mlp.down_proj": "ffn_down"}[rest]
            name = f"blk.{n}.{short}.weight"
        if name.endswith("attn_q.weight"):
            w = permute_qk(w, cfg.n_heads)
        elif name.endswith("attn_k.weight"):
            w = permute_qk(w, cfg.n_kv_heads)
        kind = getattr(gguf.GGMLQuantizationType, qtypes.get(name, "F32"))
        data = gguf.quants.quantize(np.ascontiguousarray(w, np.float32), kind) if w.ndim > 1 else w
        writer.add_tensor(name, data, raw_dtype=kind if w.ndim > 1 else None)
        back = gguf.quants.dequantize(data, kind).reshape(w.shape) if w.ndim > 1 else w
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            back = unpermute_qk(back, cfg.n_heads if "attn_q" in name else cfg.n_kv_heads)
        stored[hf_name] = back
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


QTYPES = {"token_embd.weight": "Q8_0", "blk.0.attn_q.weight": "F16", "blk.0.attn_k.weight": "BF16",
          "blk.1.attn_q.weight": "Q4_0", "blk.1.attn_k.weight": "Q4_1", "blk.0.ffn_down.weight": "Q4_1",
          "blk.1.ffn_gate.weight": "Q8_0"}


def test_gguf_loader_round_trip(tmp_path, dense):
    cfg, _, pure = dense
    hf = weights.pure_to_hf(cfg, pure)
    stored = write_gguf(tmp_path / "tiny.gguf", cfg, hf, QTYPES)
    lm = readme_jax.load(str(tmp_path / "tiny.gguf"))
    assert (lm.cfg.n_layers, lm.cfg.n_kv_heads, lm.cfg.tie_embeddings) == (2, 2, False)
    got = weights.pure_to_hf(lm.cfg, jax_to_numpy(nnx.to_pure_dict(lm.state)))
    for name, want in stored.items():  # q/k un-permuted back to HF layout, quantized values exact
        np.testing.assert_allclose(got[name], np.asarray(want, np.float32), atol=1e-6, err_msg=name)
    ids = lm.tokenizer.encode("he said 12 <|im_end|>")
    assert ids[0] == 259  # the merge "he"
    assert lm.tokenizer.decode(ids) == "he said 12 <|im_end|>"
    assert lm.tokenizer.eos_id == 258


def test_gguf_bad_inputs(tmp_path, dense):
    cfg, _, pure = dense
    hf = weights.pure_to_hf(cfg, pure)
    write_gguf(tmp_path / "q5.gguf", cfg, hf, {"blk.0.ffn_up.weight": "Q5_0"})
    with pytest.raises(ReadmeJaxError, match="unsupported type Q5_0"):
        readme_jax.load(str(tmp_path / "q5.gguf"))
    write_gguf(tmp_path / "ok.gguf", cfg, hf)
    data = (tmp_path / "ok.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ReadmeJaxError, match="truncated"):
        readme_jax.load(str(tmp_path / "cut.gguf"))
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ReadmeJaxError, match="not a GGUF file"):
        readme_jax.load(str(tmp_path / "junk.gguf"))


def test_saved_folder_config_is_hf_compatible(tmp_path, dense):
    cfg, _, pure = dense
    folder = save_hf(tmp_path / "c", cfg, weights.pure_to_hf(cfg, pure), tokenizer=tiny_tokenizer())
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_key_value_heads"] == cfg.n_kv_heads
    assert not list(tmp_path.glob(".c.tmp*"))  # the temporary build folder is gone
