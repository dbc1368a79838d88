"""Held-out evaluation against the dense model: per-token NLL, top-1 agreement and KL(dense || model)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from readme_jax import oracle, refactor
from readme_jax.evaluate import evaluate
from readme_jax.lm import LM, jax_to_numpy
from tests.helpers import tiny_config, tiny_model


@pytest.fixture(scope="module")
def parts():
    cfg = tiny_config()
    model = tiny_model(cfg, seed=3)
    pure = jax_to_numpy(nnx.to_pure_dict(nnx.split(model)[1]))
    stats = np.random.default_rng(1).random((2, cfg.n_layers, cfg.d_ff))
    tokens = np.random.default_rng(2).integers(0, cfg.vocab_size, (6, 24)).astype(np.int32)
    return cfg, model, pure, refactor.domain_masks(stats, 0.5), refactor.pruned_mask(stats, 0.5), tokens


def test_the_dense_model_agrees_with_itself(parts):
    cfg, model, _, _, _, tokens = parts
    graphdef, state = nnx.split(model)
    ref = oracle.dense_logp(graphdef, state, tokens)
    nll, agree, kl = oracle.routed_vs_dense(graphdef, state, tokens, None, ref)
    assert bool(np.asarray(agree).all())
    np.testing.assert_allclose(np.asarray(kl), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(nll), np.asarray(oracle.next_token_nll(model(tokens), tokens)), rtol=1e-6)


def test_a_routed_model_against_the_dense_one_by_hand(parts):
    cfg, model, pure, masks, _, tokens = parts
    moe = nnx.split(refactor.build_moe(cfg, pure, masks, "sliced", ["a", "b"]))
    route = (np.arange(tokens.size).reshape(tokens.shape) % 2).astype(np.int32)
    ref = oracle.dense_logp(*nnx.split(model), tokens)
    nll, agree, kl = (np.asarray(a) for a in oracle.routed_vs_dense(*moe, tokens, route, ref))
    np.testing.assert_allclose(nll, np.asarray(oracle.routed_nll(*moe, tokens, route)), rtol=1e-5)
    p = np.exp(np.asarray(ref, np.float64))
    logits = np.asarray(nnx.merge(*moe)(jnp.asarray(tokens), route=route), np.float64)[:, :-1]
    top = logits.max(-1, keepdims=True)
    logq = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))  # log-softmax in float64
    np.testing.assert_allclose(kl, (p * (np.log(p) - logq)).sum(-1), rtol=1e-3, atol=1e-5)
    assert (kl > -1e-6).all() and kl.mean() > 0
    np.testing.assert_array_equal(agree, logq.argmax(-1) == p.argmax(-1))


def test_evaluate_reports_agreement_for_every_kind_but_dense(parts):
    cfg, model, _, masks, pruned, tokens = parts
    report, _ = evaluate(LM(model, tokenizer=None), masks, pruned, {"a": tokens[:3], "b": tokens[3:]},
                         batch_size=2, progress=False)
    assert set(report["agreement_with_dense"]) == {"pruned_dense", "moe_oracle", "moe_domain"}
    for kind, per in report["agreement_with_dense"].items():
        assert set(per) == {"a", "b"} and all(0.0 <= v <= 1.0 for v in per.values())
        assert all(v >= -1e-6 for v in report["kl_to_dense"][kind].values())
    assert set(report["perplexity"]) == {"dense", "pruned_dense", "moe_oracle", "moe_domain"}


def test_one_teacher_pass_gives_the_dense_logp_and_the_overlaps(parts):
    cfg, model, _, masks, _, tokens = parts
    graphdef, state = nnx.split(model)
    k = int(masks[0, 0].sum())
    logp, overlap = oracle.teacher_logp(graphdef, state, tokens, masks, k)
    nll, overlap_ref = oracle.teacher_step(graphdef, state, tokens, masks, k)
    np.testing.assert_allclose(np.asarray(logp), np.asarray(oracle.dense_logp(graphdef, state, tokens)), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(overlap), np.asarray(overlap_ref))
    own = -np.take_along_axis(np.asarray(logp), tokens[:, 1:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(own, np.asarray(nll), rtol=1e-6, atol=1e-6)
