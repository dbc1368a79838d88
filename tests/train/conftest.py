"""Fixtures of the training tests."""

import numpy as np
import pytest
from flax import nnx

from readme_jax import refactor
from readme_jax.lm import jax_to_numpy
from readme_jax.moe_io import save_moe
from tests.helpers import tiny_config, tiny_model
from tests.model.test_loaders import VOCAB, tiny_tokenizer

DOMAINS = ("code", "legal", "quotes")


@pytest.fixture(scope="module")
def moe_folder(tmp_path_factory):
    """A tiny refactored MoE folder (3 domain experts over a random 2-layer Llama)."""
    cfg = tiny_config(vocab_size=VOCAB, eos_ids=(258,), pad_id=256)
    pure = jax_to_numpy(nnx.to_pure_dict(nnx.split(tiny_model(cfg))[1]))
    stats = np.random.default_rng(4).random((len(DOMAINS), cfg.n_layers, cfg.d_ff))
    masks = refactor.domain_masks(stats, 0.5)
    return save_moe(tmp_path_factory.mktemp("moe") / "moe", cfg, pure, masks, DOMAINS, 0.5, tiny_tokenizer(),
                    pruned_N1F=refactor.pruned_mask(stats, 0.5))
