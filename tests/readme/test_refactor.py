"""Expert construction, profiling statistic, oracle routing, the MoE folder and the analysis maths."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from readme_jax import analysis, oracle, refactor
from readme_jax.errors import ReadmeJaxError
from readme_jax.lm import jax_to_numpy
from readme_jax.moe_io import load_moe, mask_name, save_moe
from readme_jax.profile import ProfileStats, abs_sum_step, profile
from tests.helpers import tiny_config, tiny_model
from tests.model.test_loaders import VOCAB, tiny_tokenizer


def test_domain_masks_top_k_and_permanent():
    stats = np.random.default_rng(0).random((4, 3, 20))
    masks = refactor.domain_masks(stats, 0.5)
    assert masks.shape == (3, 4, 20) and (masks.sum(-1) == 10).all()
    for d in range(4):
        for n in range(3):
            assert set(np.flatnonzero(masks[n, d])) == set(np.argsort(-stats[d, n])[:10])
    report = refactor.expert_report(masks, "abcd")
    assert report["permanent_per_layer"] == masks.all(axis=1).sum(-1).tolist()
    assert np.allclose(np.diag(report["jaccard_mean"]), 1.0)
    pruned = refactor.pruned_mask(stats, 0.5)
    assert pruned.shape == (3, 1, 20) and (pruned.sum(-1) == 10).all()
    with pytest.raises(ReadmeJaxError, match="keep ratio"):
        refactor.domain_masks(stats, 0.0)


def test_profile_statistic_and_padding():
    cfg = tiny_config()
    model = tiny_model(cfg)
    graphdef, state = nnx.split(model)
    tokens = np.random.default_rng(2).integers(4, 97, (3, 8)).astype(np.int32)
    seen = []
    model.hidden(jnp.asarray(tokens), jnp.broadcast_to(jnp.arange(8), (3, 8)), jnp.ones((3, 8), bool),
                 probe=seen.append)
    want = np.stack([np.abs(np.asarray(h)).mean(axis=(0, 1)) for h in seen])
    sums = np.asarray(abs_sum_step(graphdef, state, tokens, np.ones(3, np.float32)))
    np.testing.assert_allclose(sums / tokens.size, want, rtol=1e-5)

    class Fake:  # profile() needs only these attributes of an LM
        pass

    lm = Fake()
    lm.cfg, lm.graphdef, lm.state, lm.source = cfg, graphdef, state, "tiny"
    a = profile(lm, {"x": tokens}, batch_size=2, progress=False)  # last batch padded
    b = profile(lm, {"x": tokens}, batch_size=3, progress=False)
    np.testing.assert_allclose(a.mean_abs_DNF, b.mean_abs_DNF, rtol=1e-5)
    np.testing.assert_allclose(a.mean_abs_DNF[0], want, rtol=1e-5)
    with pytest.raises(ReadmeJaxError, match="another|this model has"):
        a.check_model(cfg.replace(d_ff=128))


def test_stats_round_trip(tmp_path):
    stats = ProfileStats(np.ones((2, 3, 4)), np.array([10, 20]), ("a", "b"), "m", 4, 3, 8, 1.0)
    loaded = ProfileStats.load(stats.save(tmp_path / "stats"))
    assert loaded.domains == ("a", "b") and np.array_equal(loaded.mean_abs_DNF, stats.mean_abs_DNF)
    with pytest.raises(ReadmeJaxError, match="no activation stats"):
        ProfileStats.load(tmp_path / "nothing")


def test_topk_overlap_by_hand():
    h = jnp.asarray([[[0.1, -5.0, 3.0, 0.0]]])  # top-2 by magnitude: neurons 1 and 2
    masks = jnp.asarray([[1, 1, 0, 0], [0, 0, 1, 1], [0, 1, 1, 0]], bool)
    np.testing.assert_array_equal(np.asarray(oracle.topk_overlap(h, masks, 2))[0, 0], [1, 1, 2])
    per_layer, summed = oracle.oracle_choices(jnp.asarray([[[[2, 1, 0]]], [[[0, 3, 0]]]], jnp.float32))
    assert np.asarray(per_layer)[:, 0, 0].tolist() == [0, 1] and int(summed[0, 0]) == 1


def test_moe_folder_round_trip_and_errors(tmp_path):
    cfg = tiny_config(vocab_size=VOCAB, eos_ids=(258,), pad_id=256)
    dense = tiny_model(cfg)
    pure = jax_to_numpy(nnx.to_pure_dict(nnx.split(dense)[1]))
    masks = refactor.domain_masks(np.random.default_rng(3).random((2, cfg.n_layers, cfg.d_ff)), 0.5)
    folder = save_moe(tmp_path / "moe", cfg, pure, masks, ("a", "b"), 0.5, tiny_tokenizer())
    import readme_jax

    lm = readme_jax.load(str(folder))
    assert lm.cfg.n_experts == 2 and lm.domains == ("a", "b")
    ids = np.arange(4, 12)[None]
    want = refactor.build_moe(cfg, pure, masks, "masked")(jnp.asarray(ids), route=jnp.ones_like(ids))
    np.testing.assert_allclose(lm.logits(ids, np.ones_like(ids)), np.asarray(want), atol=1e-6)
    with pytest.raises(ReadmeJaxError, match="expert ids must be in"):
        lm.logits(ids, np.full_like(ids, 2))
    sliced, _, _, _ = load_moe(folder, form="sliced")
    assert sliced.cfg.form == "sliced"
    from safetensors.numpy import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    del tensors[mask_name(1)]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ReadmeJaxError, match="missing tensor 'readme_moe.layers.1.expert_mask'"):
        readme_jax.load(str(folder))
    config = json.loads((folder / "config.json").read_text())
    config["readme_moe"] = {"n_experts": "x"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ReadmeJaxError, match="malformed 'readme_moe'"):
        readme_jax.load(str(folder))


def test_mutual_information_and_temporal_locality():
    ident = np.diag([10, 10, 20, 20])
    p = ident.sum(0) / ident.sum()
    assert analysis.mutual_information(ident) == pytest.approx(-(p * np.log2(p)).sum())
    assert analysis.mutual_information(np.ones((4, 4))) == pytest.approx(0.0, abs=1e-12)
    experts = np.array([0, 0, 1, 0, 2, 2])
    positions = np.array([0, 1, 2, 3, 0, 1])  # two sequences
    same, hist = analysis.temporal(experts, positions, max_distance=8)
    assert same == pytest.approx(2 / 4)  # (0->0), (0->1), (1->0), (2->2)
    assert hist[1] == 2 and hist[2] == 1 and hist[8] == 1  # the first use of expert 1 is "never seen"
    trans = analysis.transition_counts(np.array([[0, 1, 1], [1, 1, 0]]), 2)
    assert trans[0].tolist() == [[0, 1], [1, 1]]


def test_refactor_writes_the_moe_folder(tmp_path):
    import readme_jax
    from readme_jax.lm import LM

    cfg = tiny_config(vocab_size=VOCAB, eos_ids=(258,), pad_id=256)
    lm = LM(tiny_model(cfg), tiny_tokenizer(), source="tiny")
    mean_abs_DNF = np.random.default_rng(4).random((3, cfg.n_layers, cfg.d_ff))
    stats = ProfileStats(mean_abs_DNF, np.array([8, 8, 8]), ("a", "b", "c"), "tiny", cfg.d_ff, cfg.n_layers, 8)
    result = refactor.refactor(lm, stats, tmp_path / "moe", keep_ratio=0.25)
    assert np.array_equal(result.masks_NEF, refactor.domain_masks(mean_abs_DNF, 0.25))
    assert np.array_equal(result.pruned_N1F, refactor.pruned_mask(mean_abs_DNF, 0.25))
    assert result.report == {**refactor.expert_report(result.masks_NEF, stats.domains), "stats_model": "tiny"}
    assert json.loads((result.folder / "refactor_report.json").read_text()) == result.report
    moe = readme_jax.load(str(result.folder))
    assert moe.domains == ("a", "b", "c") and np.array_equal(moe.masks_NEF, result.masks_NEF)
    ids = np.arange(4, 12)[None]
    pure = jax_to_numpy(nnx.to_pure_dict(lm.state))
    want = refactor.build_moe(cfg, pure, result.masks_NEF, "masked")(jnp.asarray(ids), route=jnp.full_like(ids, 2))
    np.testing.assert_allclose(moe.logits(ids, np.full_like(ids, 2)), np.asarray(want), atol=1e-6)
    with pytest.raises(ReadmeJaxError, match="already a MoE"):
        refactor.refactor(moe, stats, tmp_path / "again")
    with pytest.raises(ReadmeJaxError, match="this model has"):
        refactor.refactor(lm, dataclasses.replace(stats, d_ff=cfg.d_ff * 2), tmp_path / "other")
    assert not (tmp_path / "again").exists() and not (tmp_path / "other").exists()

