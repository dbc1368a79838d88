"""Chat rows in the training stream (``chat_every``): the stream's interleaving, the pool built from the dense
model's greedy answers, and a tiny run whose expert loss skips a chat row's padding."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from readme_jax import refactor
from readme_jax.data.fixtures import fixture_source
from readme_jax.errors import ReadmeJaxError
from readme_jax.lm import LM, jax_to_numpy
from readme_jax.moe_io import save_moe
from tests.helpers import ByteTokenizer, tiny_config, tiny_model
from tests.model.test_loaders import VOCAB, tiny_tokenizer
from tests.train.conftest import DOMAINS
from train import losses
from train.chat_data import POOL_DIR, build_pool, chat_prompts
from train.config import make_config
from train.data import BlockStream

CHAT = ["chat_every=2", "chat_per_domain=2", "chat_answer_tokens=6", "seq_len=160", "devices=1", "mesh=data=1"]


def test_every_kth_row_is_a_chat_row_and_the_text_rows_keep_their_order():
    blocks = {"a": np.arange(12).reshape(6, 2), "b": 100 + np.arange(8).reshape(4, 2)}
    chat_tokens = 1000 + np.arange(6).reshape(3, 2)
    chat_valid = np.array([[True, False], [True, True], [True, False]])
    plain = BlockStream(blocks, seed=3)
    mixed = BlockStream(blocks, seed=3, chat=(chat_tokens, chat_valid), chat_every=3)
    rows, idx, pos = mixed.take(0, 30)
    assert pos == 30 and len(mixed) == len(plain) == 10
    is_chat = rows[:, 0] >= 1000
    np.testing.assert_array_equal(is_chat, np.arange(30) % 3 == 2)
    text, _, _ = plain.take(0, 20)
    np.testing.assert_array_equal(rows[~is_chat], text)  # the text rows are the plain stream's, in its order
    chat_rows = rows[is_chat]
    assert sorted(chat_rows[:3, 0].tolist()) == [1000, 1002, 1004]  # each chat row once per chat epoch
    valid = mixed.valid(idx)
    assert valid[~is_chat].all()
    np.testing.assert_array_equal(valid[is_chat], chat_valid[(chat_rows[:, 0] - 1000) // 2])
    again, idx2, _ = BlockStream(blocks, seed=3, chat=(chat_tokens, chat_valid), chat_every=3).take(11, 7)
    np.testing.assert_array_equal(again, rows[11:18])  # a function of the position: resumable
    assert set(idx2[(again[:, 0] >= 1000)].tolist()) <= set(range(10, 13))  # chat rows keyed after the text pool
    with pytest.raises(ReadmeJaxError, match="do not fit"):
        BlockStream(blocks, chat=(np.zeros((2, 3), np.int32), np.ones((2, 3), bool)), chat_every=2)


@pytest.fixture(scope="module")
def long_folder(tmp_path_factory):
    """A tiny MoE folder whose context holds a chat prompt (the byte-level tokenizer makes them long)."""
    cfg = tiny_config(vocab_size=VOCAB, eos_ids=(258,), pad_id=256, max_seq_len=256)
    pure = jax_to_numpy(nnx.to_pure_dict(nnx.split(tiny_model(cfg))[1]))
    stats = np.random.default_rng(4).random((len(DOMAINS), cfg.n_layers, cfg.d_ff))
    return save_moe(tmp_path_factory.mktemp("moe") / "moe", cfg, pure, refactor.domain_masks(stats, 0.5), DOMAINS,
                    0.5, tiny_tokenizer(), pruned_N1F=refactor.pruned_mask(stats, 0.5))


def test_the_pool_is_each_prompt_and_the_dense_greedy_answer(long_folder):
    from readme_jax.moe_io import read_moe_folder
    from readme_jax.weights import build_model

    parts = read_moe_folder(long_folder)
    lm = LM(build_model(parts["cfg"], parts["dense_pure"]), parts["tokenizer"])
    domains = fixture_source().select(list(DOMAINS))
    prompts = chat_prompts(lm.tokenizer, domains, 2, room=150)
    assert len(prompts) == 2 * len(DOMAINS) and all(len(p) <= 150 for p in prompts)
    tokens, valid = build_pool(lm, prompts, 160, 6, progress=False)
    assert tokens.shape == valid.shape == (len(prompts), 160)
    for row, prompt in enumerate(prompts):
        n = int(valid[row].sum())
        assert valid[row, :n].all() and 1 <= n - len(prompt) <= 6
        assert tokens[row, :len(prompt)].tolist() == prompt
        logits = lm.logits(tokens[row:row + 1, :n - 1])[0]
        np.testing.assert_array_equal(logits[len(prompt) - 1:].argmax(-1), tokens[row, len(prompt):n])
    with pytest.raises(ReadmeJaxError, match="chat template"):
        chat_prompts(ByteTokenizer(), domains, 1, room=150)
    with pytest.raises(ReadmeJaxError, match="no chat prompt fits"):
        chat_prompts(lm.tokenizer, domains, 1, room=20)


def test_a_run_with_chat_rows_masks_their_padding_and_reuses_its_pool(tmp_path, long_folder, monkeypatch):
    """The pruned baseline's first expert loss equals the LM loss over the real tokens of the rows it read
    (chat rows' padding excluded); its pool is the MoE run's, not built again."""
    from readme_jax.moe_io import read_moe_folder
    from readme_jax.refactor import build_moe
    from train import chat_data
    from train.run import prepare, train

    cfg = make_config("tiny", CHAT)
    moe = train(cfg, tmp_path, long_folder, progress=False, domains=fixture_source())
    assert moe["global_steps"] == 10
    manifest = json.loads((tmp_path / POOL_DIR / "manifest.json").read_text())
    assert manifest["per_domain"] == 2 and manifest["answer_tokens"] == 6

    def refuse(*args, **kw):
        raise AssertionError("the pool was built again")

    monkeypatch.setattr(chat_data, "build_pool", refuse)
    base = train(cfg, tmp_path, long_folder, progress=False, domains=fixture_source(), baseline="pruned")
    first = json.loads((tmp_path / "train_pruned" / "metrics.jsonl").read_text().splitlines()[0])
    setup, _, _ = prepare(cfg, tmp_path, long_folder, progress=False, domains=fixture_source())
    tokens, idx, _ = setup.stream.take(cfg.router_steps * cfg.router_batch, cfg.expert_batch)
    valid = setup.stream.valid(idx)
    assert not valid.all() and base["global_steps"] == 4  # the batch holds a padded chat row
    parts = read_moe_folder(long_folder)
    pruned = build_moe(parts["cfg"], parts["dense_pure"], parts["pruned_N1F"], "masked", ["pruned"])
    tokens = jnp.asarray(tokens, jnp.int32)
    want = losses.lm_loss(pruned(tokens, route=jnp.zeros(tokens.shape, jnp.int32)), tokens, jnp.asarray(valid))
    assert first["loss"] == pytest.approx(float(want), rel=1e-5)
    with pytest.raises(ReadmeJaxError, match="chat_answer_tokens"):
        make_config("tiny", ["chat_every=2", "chat_answer_tokens=16"])
