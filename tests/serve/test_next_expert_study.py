"""scripts/next_expert_study.py: its vectorised home is the policy's home, and its router features are the
router's own routing (the study compares forecasts on equal terms only if both hold)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

import readme_jax
from readme_jax import refactor
from readme_jax.lm import jax_to_numpy
from readme_jax.moe_io import save_moe
from readme_jax.router import RouterConfig, init_router
from serve.core.home import HOME_WINDOW, window_home
from tests.helpers import tiny_config, tiny_model
from tests.model.test_loaders import VOCAB, tiny_tokenizer

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "next_expert_study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("next_expert_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("window", [4, HOME_WINDOW])
def test_examples_align_next_current_and_home_with_serve_core(study, window, monkeypatch):
    import serve.core.home as home

    monkeypatch.setattr(home, "HOME_WINDOW", window)  # window_home reads the module's window
    rng = np.random.default_rng(0)
    E, D = 4, 3
    lengths = [40, 7, 2]
    # Long runs on one expert with excursions, as routed text has; ties between experts occur too.
    e_BL = np.where(rng.random((3, 40)) < 0.7, rng.integers(0, 2, (3, 1)), rng.integers(0, E, (3, 40)))
    x_BLD = rng.normal(size=(3, 40, D)).astype(np.float32)
    feats, nxt, cur, homes = study.examples(x_BLD, e_BL, lengths, E, window)
    assert feats.shape == (sum(n - 1 for n in lengths), D + 2 * E) and len(nxt) == len(cur) == len(homes)
    at = 0
    for row, n in enumerate(lengths):
        seq = e_BL[row, :n].tolist()
        for t in range(n - 1):
            assert (cur[at], nxt[at]) == (seq[t], seq[t + 1])
            assert homes[at] == window_home(seq[:t + 1], seq[t], E)
            np.testing.assert_array_equal(feats[at, :D], x_BLD[row, t])
            at += 1


def test_router_features_are_the_routers_experts(study, tmp_path):
    cfg = tiny_config(vocab_size=VOCAB, eos_ids=(258,), pad_id=256)
    pure = jax_to_numpy(nnx.to_pure_dict(nnx.split(tiny_model(cfg))[1]))
    masks_NEF = refactor.domain_masks(np.random.default_rng(3).random((3, cfg.n_layers, cfg.d_ff)), 0.5)
    rcfg = RouterConfig(vocab_size=VOCAB, n_experts=3, d_model=16, d_ff=16, n_heads=2, max_seq_len=64)
    router_pure = jax_to_numpy(nnx.to_pure_dict(nnx.state(init_router(rcfg, rngs=nnx.Rngs(5)))))
    folder = save_moe(tmp_path / "routed", cfg, pure, masks_NEF, ("code", "legal", "quotes"), 0.5,
                      tiny_tokenizer(), router=(rcfg, router_pure))
    lm = readme_jax.load(str(folder))
    ids_BL = np.random.default_rng(1).integers(0, 250, (3, 12)).astype(np.int32)
    x_BLD, e_BL = study.router_features(lm, ids_BL, batch=2)  # the last chunk is padded
    assert x_BLD.shape == (3, 12, 16)
    np.testing.assert_array_equal(e_BL, lm.route(ids_BL))
