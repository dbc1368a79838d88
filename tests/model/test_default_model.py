"""The embedded default model (SmolLM2-135M-Instruct GGUF). Skipped until `make setup` fetched it."""

import numpy as np
import pytest

import readme_jax
from readme_jax.assets import default_gguf_path

pytestmark = [pytest.mark.realmodel,
              pytest.mark.skipif(not default_gguf_path().is_file(), reason="default model not fetched (make setup)")]

TEXT = ("def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
        "The licence grants 3 rights, 12 duties and 2024 caveats.")


@pytest.fixture(scope="module")
def lm():
    return readme_jax.load("default")


def test_config_and_tokenizer(lm):
    assert (lm.cfg.n_layers, lm.cfg.d_model, lm.cfg.d_ff, lm.cfg.n_heads, lm.cfg.n_kv_heads) == (30, 576, 1536, 9, 3)
    assert lm.cfg.tie_embeddings and lm.cfg.rope_theta == 100000.0
    ids = lm.tokenizer.encode(TEXT)
    assert lm.tokenizer.decode(ids) == TEXT
    digits = lm.tokenizer.encode("2024")
    assert len(digits) == 4  # SmolLM2 splits every digit
    assert lm.tokenizer.encode("x", add_special_tokens=True) == lm.tokenizer.encode("x")  # no BOS for SmolLM2
    assert lm.tokenizer.apply_chat("hi").endswith("<|im_start|>assistant\n")


def test_matches_transformers(lm):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    path = default_gguf_path()
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                            dtype=torch.float32).eval()
    ids = np.asarray([lm.tokenizer.encode(TEXT)])
    with torch.no_grad():
        want = ref(torch.from_numpy(ids)).logits.numpy()
    got = lm.logits(ids)
    assert np.abs(got - want).max() <= 1e-3
    prompt = lm.encode_prompt("What is the capital of France?", chat=True)
    with torch.no_grad():
        hf = ref.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=None,
                          min_new_tokens=24)[0, len(prompt):].tolist()
    from readme_jax.generate import SamplingParams

    ours = lm.generate_ids([prompt], SamplingParams(max_new_tokens=24), )[0]
    assert ours == hf[: len(ours)]  # identical greedy tokens (ours may stop early at EOS)
    assert "Paris" in lm.tokenizer.decode(ours)
