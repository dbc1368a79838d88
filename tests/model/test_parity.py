"""Numerical parity with transformers' LlamaForCausalLM (skipped when torch is absent)."""

import numpy as np
import pytest

import readme_jax
from tests.model.test_loaders import VOCAB, tiny_tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_tiny_random_config_matches_transformers(tmp_path):
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, rope_theta=5000.0,
                                   max_position_embeddings=128, tie_word_embeddings=False, initializer_range=0.2,
                                   eos_token_id=258, pad_token_id=256)
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norm weights so that they are exercised too
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    ref.save_pretrained(tmp_path)
    tiny_tokenizer().save(tmp_path)
    lm = readme_jax.load(str(tmp_path))
    ids = np.random.default_rng(0).integers(0, VOCAB, (2, 24))
    with torch.no_grad():
        want = ref(torch.from_numpy(ids)).logits.numpy()
    got = lm.logits(ids)
    assert np.abs(got - want).max() <= 1e-3 * max(1.0, np.abs(want).max() / 10)
    assert np.abs(got - want).max() <= 1e-3
