"""Training: losses by hand, the schedule, the data stream, and tiny end-to-end runs (export, exact resume)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from readme_jax import refactor
from readme_jax.data.fixtures import fixture_source
from readme_jax.errors import ReadmeJaxError
from tests.train.conftest import DOMAINS
from train import losses
from train.config import make_config
from train.data import BlockStream
from train.loop import schedule, stage_lr


def test_paper_loss_by_hand():
    overlap_NBLE = jnp.asarray(np.random.default_rng(0).integers(0, 8, (3, 2, 5, 4)), jnp.float32)
    valid = jnp.ones((2, 5), bool)
    k, tau = 8, 0.05
    target_BLE = overlap_NBLE.sum(0) / (3 * k * tau)
    # A router that outputs the target logits has zero KL in both directions.
    overlap_BLE = overlap_NBLE.sum(0)
    for direction in losses.KL_DIRECTIONS:
        assert float(losses.paper_loss(target_BLE, overlap_BLE, valid, 3 * k, tau, direction)) == pytest.approx(0, abs=1e-6)
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 4)), jnp.float32)
    p, q = jax.nn.softmax(logits), jax.nn.softmax(target_BLE)
    want_rt = float(jnp.mean(jnp.sum(p * (jnp.log(p) - jnp.log(q)), -1)))
    want_tr = float(jnp.mean(jnp.sum(q * (jnp.log(q) - jnp.log(p)), -1)))
    assert float(losses.paper_loss(logits, overlap_BLE, valid, 3 * k, tau, "router_target")) == pytest.approx(want_rt, rel=1e-5)
    assert float(losses.paper_loss(logits, overlap_BLE, valid, 3 * k, tau, "target_router")) == pytest.approx(want_tr, rel=1e-5)
    # Padding does not count.
    half = valid.at[:, 3:].set(False)
    want = float(jnp.mean(jnp.sum(q * (jnp.log(q) - jnp.log(p)), -1)[:, :3]))
    assert float(losses.paper_loss(logits, overlap_BLE, half, 3 * k, tau, "target_router")) == pytest.approx(want, rel=1e-5)


def test_reference_loss_matches_numpy():
    rng = np.random.default_rng(2)
    h_BLF = rng.normal(size=(2, 3, 40)).astype(np.float32)
    masks_EF = np.zeros((3, 40), bool)
    for e in range(3):
        masks_EF[e, rng.permutation(40)[:20]] = True
    permanent_F = masks_EF.all(0)
    specific_EF = masks_EF & ~permanent_F
    n = int(specific_EF[0].sum())
    scores = np.asarray(losses.graded_scores(jnp.asarray(h_BLF), jnp.asarray(specific_EF), n))
    # The code: thresholds at sort_desc(a)[c] for c in (n-1, 4n/5, 3n/5, 2n/5, n/5), strict ">".
    srt = -np.sort(-h_BLF, axis=-1)
    f = np.zeros_like(h_BLF)
    for c in (n - 1, 4 * n // 5, 3 * n // 5, 2 * n // 5, n // 5):
        f += h_BLF > srt[..., c:c + 1]
    # ">" against the c-th sorted value keeps exactly c neurons: our top-c sets.
    want = np.einsum("BLF,EF->BLE", f / (3 * n), specific_EF)
    np.testing.assert_allclose(scores, want, atol=1e-6)

    logits = jnp.asarray(rng.normal(size=(2, 3, 3)), jnp.float32)
    scores_NBLE = jnp.stack([jnp.asarray(want), jnp.asarray(want[::-1])])
    got = float(losses.reference_loss(logits, scores_NBLE, jnp.ones((2, 3), bool)))
    total = 0.0
    logp = np.asarray(jax.nn.log_softmax(logits))
    for layer in np.asarray(scores_NBLE):
        dist = (layer - layer.mean()) * 10
        hard = np.eye(3)[dist.argmax(-1)] * 0.5 + 0.5 / 3
        soft = np.exp(dist - dist.max(-1, keepdims=True))
        soft /= soft.sum(-1, keepdims=True)
        total += (0.75 * -(hard * logp).sum(-1) + 0.25 * -(soft * logp).sum(-1)).mean()
    assert got == pytest.approx(total, rel=1e-5)


def test_schedule_and_lr():
    cfg = make_config("tiny", ["rounds=3", "router_steps=4", "expert_steps=0", "round_decay=0.5", "warmup_frac=0"])
    assert schedule(cfg) == [(0, "router", 4), (1, "router", 4), (2, "router", 4)]
    assert stage_lr(cfg, "router", 0, 0) == pytest.approx(cfg.router_lr)
    assert stage_lr(cfg, "router", 2, 0) == pytest.approx(cfg.router_lr * 0.25)
    assert stage_lr(cfg, "router", 1, 2) == pytest.approx(cfg.router_lr * 0.5 * 0.5 * (1 + math.cos(math.pi / 2)))
    warm = cfg.replace(router_steps=10, warmup_frac=0.2)  # 2 warm-up steps, then 8 of cosine
    lrs = [stage_lr(warm, "router", 0, i) for i in range(10)]
    assert lrs[0] == pytest.approx(cfg.router_lr / 3) and lrs[1] == pytest.approx(2 * cfg.router_lr / 3)
    assert lrs[2] == pytest.approx(cfg.router_lr) and lrs[6] == pytest.approx(cfg.router_lr / 2)


def test_config_errors():
    with pytest.raises(ReadmeJaxError, match="unknown preset 'huge'"):
        make_config("huge")
    with pytest.raises(ReadmeJaxError, match="unknown override key 'lr'"):
        make_config("default", ["lr=1"])
    with pytest.raises(ReadmeJaxError, match="not a valid int"):
        make_config("default", ["rounds=two"])
    with pytest.raises(ReadmeJaxError, match="not a multiple of micro_batch"):
        make_config("default", ["router_batch=6", "micro_batch=4"])
    with pytest.raises(ReadmeJaxError, match="distill='kl'"):
        make_config("default", ["distill=kl"])
    with pytest.raises(ReadmeJaxError, match="router_rope_theta=-1.0 must be >= 0"):
        make_config("default", ["router_rope_theta=-1"])
    assert make_config("paper").seq_len == 4096 and make_config("paper").rounds == 8


def test_block_stream_is_deterministic_and_resumable():
    blocks = {"a": np.arange(12).reshape(6, 2), "b": 100 + np.arange(8).reshape(4, 2)}
    stream = BlockStream(blocks, seed=3)
    first, idx, pos = stream.take(0, 7)
    dom = stream.domain_T[idx]
    second, _, pos2 = stream.take(pos, 9)  # crosses into epoch 1
    again, _, _ = BlockStream(blocks, seed=3).take(7, 9)
    np.testing.assert_array_equal(second, again)
    assert pos2 == 16 and len(set(first[:, 0].tolist())) == 7  # no repeats inside an epoch
    assert set(dom.tolist()) == {0, 1}  # domains mixed
    epoch0 = np.concatenate([first, second[:3]])
    assert sorted(epoch0[:, 0].tolist()) == sorted(np.concatenate(list(blocks.values()))[:, 0].tolist())


# -- end to end on a tiny model -------------------------------------------------------------------------------

def _train(tmp, moe_folder, overrides=(), **kw):
    from train.run import train

    cfg = make_config("tiny", ["devices=1", "mesh=data=1", *overrides])
    return train(cfg, tmp, moe_folder, progress=False, domains=fixture_source(), **kw)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, moe_folder):
    work = tmp_path_factory.mktemp("full")
    return work, _train(work, moe_folder)


def test_full_run_exports_a_loadable_moe_with_router(full_run):
    import readme_jax

    work, summary = full_run
    assert summary["global_steps"] == 10
    rows = [json.loads(line) for line in (work / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in rows] == list(range(1, 11))
    assert [r["stage"] for r in rows[:5]] == ["router"] * 3 + ["expert"] * 2
    assert all(np.isfinite(r["loss"]) for r in rows) and 0 <= rows[0]["router_acc"] <= 1
    lm = readme_jax.load(str(work / "moe_trained"))
    ids = np.arange(4, 20)[None]
    route = lm.route(ids)
    assert route.shape == (1, 16) and route.max() < len(DOMAINS)
    assert np.isfinite(lm.logits(ids)).all()
    assert (work / "train" / "loss.png").stat().st_size > 0


def test_pruned_baseline_tunes_on_the_expert_stages_blocks_with_their_schedule(tmp_path, moe_folder, full_run):
    """``train --baseline pruned``: the pruned-dense model gets the expert stages' steps, learning rates and
    blocks of text (its first loss is the untuned pruned model's loss on the blocks the full run's first
    expert step read), and exports a one-expert folder that loads."""
    import readme_jax
    from readme_jax.moe_io import read_moe_folder
    from readme_jax.refactor import build_moe
    from train.run import prepare

    work, _ = full_run
    summary = _train(tmp_path, moe_folder, baseline="pruned")
    full = [json.loads(line) for line in (work / "train" / "metrics.jsonl").read_text().splitlines()]
    base = [json.loads(line) for line in (tmp_path / "train_pruned" / "metrics.jsonl").read_text().splitlines()]
    experts = [r for r in full if r["stage"] == "expert"]
    assert summary["global_steps"] == len(base) == len(experts) == 4
    assert [(r["round"], r["step"], r["lr"]) for r in base] == [(r["round"], r["step"], r["lr"]) for r in experts]
    assert all(r["stage"] == "expert" and r["expert_usage"] == [1.0] for r in base)

    cfg = make_config("tiny", ["devices=1", "mesh=data=1"])
    setup, _, _ = prepare(cfg, tmp_path / "probe", moe_folder, progress=False, domains=fixture_source())
    tokens, _, _ = setup.stream.take(cfg.router_steps * cfg.router_batch, cfg.expert_batch)
    parts = read_moe_folder(moe_folder)
    pruned = build_moe(parts["cfg"], parts["dense_pure"], parts["pruned_N1F"], "masked", ["pruned"])
    tokens = jnp.asarray(tokens, jnp.int32)
    want = losses.lm_loss(pruned(tokens, route=jnp.zeros(tokens.shape, jnp.int32)), tokens,
                          jnp.ones(tokens.shape, bool))
    assert base[0]["loss"] == pytest.approx(float(want), rel=1e-5)

    lm = readme_jax.load(str(tmp_path / "pruned_tuned"))
    assert lm.cfg.n_experts == 1 and lm.router is None
    ids = np.arange(4, 20)[None]
    assert np.isfinite(lm.logits(ids, np.zeros_like(ids))).all()
    with pytest.raises(ReadmeJaxError, match="only baseline"):
        _train(tmp_path / "bad", moe_folder, baseline="nope")


def test_kd_loss_by_hand():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(2, 2, 5, 7)).astype(np.float32)
    tokens = jnp.asarray(rng.integers(0, 7, (2, 5)), jnp.int32)
    valid = np.ones((2, 5), bool)
    valid[1, 3:] = False  # positions whose next token is padding do not count

    def logsoftmax(x):
        return x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))

    t, s_ = logsoftmax(teacher[:, :-1].astype(np.float64)), logsoftmax(student[:, :-1].astype(np.float64))
    kl = (np.exp(t) * (t - s_)).sum(-1)
    want = kl[valid[:, 1:]].mean()
    got = losses.kd_loss(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(valid))
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert float(losses.kd_loss(jnp.asarray(teacher), jnp.asarray(teacher), jnp.asarray(valid))) == pytest.approx(
        0.0, abs=1e-6)
    mix = losses.expert_loss("mix", 0.25, jnp.asarray(student), tokens, jnp.asarray(valid), jnp.asarray(teacher))
    lm = losses.lm_loss(jnp.asarray(student), tokens, jnp.asarray(valid))
    assert float(mix) == pytest.approx(0.75 * float(lm) + 0.25 * want, rel=1e-5)


def test_expert_loss_kd_and_mix_distil_from_the_dense_teacher(tmp_path, moe_folder):
    """The first expert step of three otherwise identical runs: mix's loss is the weighted sum of lm's and kd's
    (same routes, same blocks, same parameters), and kd's is a non-negative KL."""
    first = {}
    for form in ("lm", "kd", "mix"):
        over = [f"expert_loss={form}", "kd_weight=0.25"]
        assert _train(tmp_path / form, moe_folder, over, stop_after=4) == {"stopped_at": 4}
        rows = [json.loads(line) for line in (tmp_path / form / "train" / "metrics.jsonl").read_text().splitlines()]
        first[form] = next(r["loss"] for r in rows if r["stage"] == "expert")
    assert first["kd"] > 0
    assert first["mix"] == pytest.approx(0.75 * first["lm"] + 0.25 * first["kd"], rel=1e-4)
    with pytest.raises(ReadmeJaxError, match="expert_loss"):
        make_config("tiny", ["expert_loss=kl"])
    with pytest.raises(ReadmeJaxError, match="kd_weight"):
        make_config("tiny", ["kd_weight=0"])


def test_stopped_and_resumed_run_equals_uninterrupted(tmp_path, moe_folder, full_run):
    import readme_jax

    work, _ = full_run
    assert _train(tmp_path, moe_folder, stop_after=4) == {"stopped_at": 4}  # inside round 0's expert stage
    summary = _train(tmp_path, moe_folder)
    assert summary["global_steps"] == 10
    a, b = readme_jax.load(str(work / "moe_trained")), readme_jax.load(str(tmp_path / "moe_trained"))
    for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(a.router_state), jax.tree.leaves(b.router_state)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    rows_a = (work / "train" / "metrics.jsonl").read_text().splitlines()
    rows_b = (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(r).items() if k != "tokens_per_s"} for r in rows_a]
    assert strip == [{k: v for k, v in json.loads(r).items() if k != "tokens_per_s"} for r in rows_b]


def test_checkpoint_from_another_config_is_refused(tmp_path, moe_folder):
    assert _train(tmp_path, moe_folder, stop_after=1) == {"stopped_at": 1}
    with pytest.raises(ReadmeJaxError, match="another model or config: .*seq_len 16 != 32"):
        _train(tmp_path, moe_folder, overrides=["seq_len=32"])


def test_sigkilled_run_resumes_from_its_last_complete_checkpoint(tmp_path, moe_folder, full_run):
    """A training process killed with SIGKILL mid-run resumes from a complete checkpoint and ends exactly
    where an uninterrupted run ends."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import readme_jax
    from train.checkpoint import Checkpointer

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    child = subprocess.Popen([sys.executable, "-m", "tests.train.train_child", str(tmp_path), str(moe_folder)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = Checkpointer(tmp_path / "train" / "ckpt", save_every=1)
    deadline = time.time() + 240
    while (ckpt.latest_step() or 0) < 3:
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "the child made no checkpoint in time"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    killed_at = ckpt.latest_step()
    assert 3 <= killed_at < 10
    summary = _train(tmp_path, moe_folder)
    assert summary["global_steps"] == 10
    work, _ = full_run
    a, b = readme_jax.load(str(work / "moe_trained")), readme_jax.load(str(tmp_path / "moe_trained"))
    for x, y in zip(jax.tree.leaves((a.state, a.router_state)), jax.tree.leaves((b.state, b.router_state))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_sharded_steps_equal_single_device_steps(tmp_path, moe_folder):
    """The real router and expert steps on a 2x2x2 mesh of 8 fake CPU devices give the single-device results."""
    from train.loop import Trainer
    from train.run import prepare

    if len(jax.devices()) < 8:
        pytest.skip("needs the 8 fake CPU devices of tests/conftest.py")
    results = []
    for mesh, devices in (("data=2,fsdp=2,tensor=2", "8"), ("data=1", "1")):
        cfg = make_config("tiny", [f"mesh={mesh}", f"devices={devices}"])
        setup, _, _ = prepare(cfg, tmp_path / mesh, moe_folder, progress=False, domains=fixture_source())
        trainer = Trainer(setup, progress=False)
        tokens, idx, _ = setup.stream.take(0, cfg.router_batch)
        opt, m_router = trainer._step("router", trainer._start_stage("router"), tokens, idx, 1e-2)
        opt, m_expert = trainer._step("expert", trainer._start_stage("expert"), tokens, idx, 1e-3)
        trainer.ckpt.close()
        if devices == "8":
            leaf = trainer.params["blocks"][0]["w_gate_DF"]
            assert len(leaf.sharding.device_set) == 8 and tuple(leaf.sharding.spec) == ("fsdp", "tensor")
        results.append((m_router, m_expert, jax.device_get(trainer.params), jax.device_get(trainer.router_params)))
    (ra, ea, pa, qa), (rb, eb, pb, qb) = results
    assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5) and ra["router_acc"] == rb["router_acc"]
    assert ea["loss"] == pytest.approx(eb["loss"], rel=1e-5)
    # Adam's first update is ~lr * sign(g): summation-order noise in tiny gradients moves a weight by up to
    # ~lr, so compare with an absolute tolerance of a few learning rates' fraction.
    for x, y in zip(jax.tree.leaves((pa, qa)), jax.tree.leaves((pb, qb))):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=2e-3)


def test_code_variants_train_only_what_they_should(tmp_path, moe_folder):
    """distill=reference, teacher=previous, expert_params=experts, bf16 compute: the run trains, only the MLP
    weights of the backbone move, and the previous-round teacher is checkpointed during router stages."""
    import readme_jax
    from readme_jax.moe_io import read_moe_folder
    from train.checkpoint import Checkpointer

    over = ["distill=reference", "teacher=previous", "expert_params=experts", "compute_dtype=bfloat16"]
    assert _train(tmp_path, moe_folder, over, stop_after=2) == {"stopped_at": 2}  # inside round 0's router stage
    ckpt = Checkpointer(tmp_path / "train" / "ckpt", save_every=1)
    assert ckpt.read_meta(2)["stage"] == "router"
    assert (tmp_path / "train" / "ckpt" / "2" / "state").is_dir()
    summary = _train(tmp_path, moe_folder, over)
    rows = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    assert summary["global_steps"] == 10 and all(np.isfinite(r["loss"]) for r in rows)
    before = read_moe_folder(moe_folder)["dense_pure"]
    after = nnx.to_pure_dict(readme_jax.load(str(tmp_path / "moe_trained"), form="masked").state)
    for name in ("w_q_DHK", "attn_norm_D", "w_gate_DF", "w_down_FD"):
        moved = not np.array_equal(np.asarray(after["blocks"][0][name]), before["blocks"][0][name])
        assert moved == (name in ("w_gate_DF", "w_down_FD")), name
    assert np.array_equal(np.asarray(after["embed_VD"]), before["embed_VD"])


def test_training_learns_on_the_tiny_preset(tmp_path, moe_folder):
    """Router agreement with the oracle rises and the expert stage's LM loss falls (not just "finite").

    12 blocks (4 per domain) in batches of 12: every step sees the same fixed set, so the metrics each step
    reports (taken before its update) form a clean before/after curve. Measured with seeds 0, 1 and 2:
    agreement rose 45-49 points in 8 router steps (from 0.30-0.38; chance is 1/3) and the LM loss fell 4.0%
    in 8 expert steps. The test asks for half of each: 25 points and 2%.
    """
    over = ["rounds=1", "router_steps=8", "expert_steps=8", "router_batch=12", "expert_batch=12",
            "blocks_per_domain=4", "save_every=100"]  # checkpoints only at the end of each stage
    _train(tmp_path, moe_folder, over, export=False)
    rows = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    router = [r for r in rows if r["stage"] == "router"]
    expert = [r for r in rows if r["stage"] == "expert"]
    assert len(router) == len(expert) == 8
    assert router[-1]["router_acc"] - router[0]["router_acc"] >= 0.25, [r["router_acc"] for r in router]
    assert expert[-1]["loss"] <= 0.98 * expert[0]["loss"], [r["loss"] for r in expert]


def test_a_sliced_backbone_is_refused(tmp_path, moe_folder):
    """The sliced form has neither the teacher's all-ones masks nor the MLP names expert_params=experts trains."""
    import dataclasses

    from train.loop import Trainer
    from train.run import prepare

    cfg = make_config("tiny", ["devices=1", "mesh=data=1"])
    setup, parts, _ = prepare(cfg, tmp_path, moe_folder, progress=False, domains=fixture_source())
    from readme_jax.moe_io import read_moe_folder

    dense_pure = read_moe_folder(moe_folder)["dense_pure"]  # prepare read only the embedding on the host
    sliced = refactor.build_moe(parts["cfg"], dense_pure, parts["masks_NEF"], "sliced")
    with pytest.raises(ReadmeJaxError, match="needs the masked form of the MoE, got the sliced form"):
        Trainer(dataclasses.replace(setup, params=nnx.state(sliced, nnx.Param)), progress=False)
