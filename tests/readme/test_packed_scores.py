"""Prefix-tree packing of downstream requests: every model kind scores a packed batch exactly as it scores each
request alone with a plain causal forward (routes included), and shared prefixes are computed once."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from readme_jax import refactor
from readme_jax.lm import MoELM, jax_to_numpy
from readme_jax.router import RouterConfig, init_router
from readme_jax.router import route as router_logits
from readme_jax.tasks import score, trunks
from readme_jax.errors import ReadmeJaxError
from readme_jax.tasks.run import model_kinds, select_kinds
from tests.helpers import tiny_config, tiny_model


@pytest.fixture(scope="module")
def listed():
    cfg = tiny_config()
    pure = jax_to_numpy(nnx.to_pure_dict(nnx.split(tiny_model(cfg, seed=5))[1]))
    stats = np.random.default_rng(0).random((2, cfg.n_layers, cfg.d_ff))
    masks, pruned = refactor.domain_masks(stats, 0.5), refactor.pruned_mask(stats, 0.5)
    parts = {"cfg": cfg, "dense_pure": pure, "masks_NEF": masks, "pruned_N1F": pruned, "domains": ["a", "b"]}
    rcfg = RouterConfig(vocab_size=cfg.vocab_size, n_experts=2, d_model=16, d_ff=16, n_heads=2, max_seq_len=128)
    router = init_router(rcfg, rngs=nnx.Rngs(1))
    trained = MoELM(refactor.build_moe(cfg, pure, masks, "sliced", ["a", "b"]), None, masks_NEF=masks,
                    router=router)
    return model_kinds(parts, trained=trained)


@pytest.fixture(scope="module")
def kinds(listed):
    return {name: build() for name, build in listed}


def test_kinds_are_chosen_by_name(listed):
    assert [n for n, _ in select_kinds(listed, "moe_router, dense")] == ["dense", "moe_router"]
    assert select_kinds(listed, None) == listed
    with pytest.raises(ReadmeJaxError, match="--kinds names 'pruned_tuned'; this work folder has dense, pruned_dense"):
        select_kinds(listed, "dense,pruned_tuned")


def _requests():
    """Four documents: choices sharing a context, one-token answers sharing a whole input, a long shared
    "few-shot" prefix with different questions, and a request sharing nothing."""
    rng = np.random.default_rng(7)
    shots = list(rng.integers(4, 97, 40))
    out = []
    ctx = [1] + list(rng.integers(4, 97, 9))
    for n in (1, 3, 2):
        out.append(score.Encoded(tuple(ctx + list(rng.integers(4, 97, n - 1))), tuple(rng.integers(4, 97, n))))
    for q in range(3):
        question = list(rng.integers(4, 97, 5 + q))
        out += [score.Encoded(tuple([1] + shots + question), (a,)) for a in (10, 11, 12, 13)]
    out.append(score.Encoded(tuple(rng.integers(4, 97, 17)), (5, 6)))
    return out


ALONE = 64  # every request alone, right-padded to one length (causal: padding never changes real positions)


@partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, ids_1L, route_1L):
    return nnx.merge(graphdef, state)(ids_1L, route=route_1L)


def _alone(kind, req):
    """(log-likelihood, greedy) from one plain causal forward of this request alone."""
    ids_1L = np.zeros((1, ALONE), np.int32)
    L = len(req.input_ids)
    ids_1L[0, :L] = req.input_ids
    route = None
    if kind.route is not None:
        causal = np.tril(np.ones((1, ALONE, ALONE), bool))
        route = jnp.asarray(kind.route(ids_1L, np.arange(ALONE)[None], causal), jnp.int32)
    logits = np.asarray(_forward(kind.graphdef, kind.state, jnp.asarray(ids_1L), route)[0, :L], np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    m = len(req.target_ids)
    at = np.arange(L - m, L)
    return logp[at, req.target_ids].sum(), bool((logp[at].argmax(-1) == req.target_ids).all())


@pytest.mark.parametrize("trunk_min", [trunks.TRUNK_MIN, 16])
def test_every_kind_scores_packed_rows_as_each_request_alone(kinds, trunk_min, monkeypatch):
    """With the default threshold every request is in packed rows; at 16 the few-shot documents share a
    cached trunk (BOS and the shots) and the rest stay in rows."""
    monkeypatch.setattr(trunks, "TRUNK_MIN", trunk_min)
    requests = _requests()
    assert set(kinds) == {"dense", "pruned_dense", "moe_oracle", "moe_router"}
    for name, kind in kinds.items():
        got = score.score(kind, requests, progress=False)
        for req, lp, greedy in zip(requests, got["logprob"], got["greedy"]):
            ref_lp, ref_greedy = _alone(kind, req)
            assert lp == pytest.approx(ref_lp, abs=1e-4), name
            assert greedy == ref_greedy, name
    if trunk_min == 16:
        assert got["trunks"] == 1 and got["trunk_tokens"] == 41  # BOS + the 40 shots, once
        assert got["rows"] == 2  # the suffix rows of the group and one row for the rest
    else:
        assert got["trunks"] == 0 and got["rows"] == 1
        # the 40-token shot prefix and the 10-token context count once: far fewer nodes than input tokens
        assert got["tokens"] < got["input_tokens"] / 3


def test_trunk_groups_need_a_long_common_prefix_before_every_scored_token(monkeypatch):
    monkeypatch.setattr(trunks, "TRUNK_MIN", 4)
    reqs = [score.Encoded((1, 2, 3, 4, 5, 6), (7,)), score.Encoded((1, 2, 3, 4, 5, 9), (8,)),
            score.Encoded((1, 2, 3, 4, 5), (6, 7)),  # scored from position 3: a trunk of 3 is too short
            score.Encoded((1, 2, 8), (9,)),  # shares only 2
            score.Encoded((1, 2, 3, 4, 5, 6, 0), (1, 2, 3))]  # scored from position 4: the trunk shrinks to 4
    plain, groups = trunks.split(reqs)
    assert plain == [2, 3] and groups == [(4, [0, 4, 1])]
    same = [score.Encoded((1, 2, 3, 4, 5, 6), (t,)) for t in (7, 8, 9)]  # one input, three answers: no trunk
    assert trunks.split(same) == ([0, 1, 2], [])


def test_a_tree_route_equals_the_plain_causal_route(kinds):
    """The router over a packed row gives each request's tokens the experts the router gives them alone."""
    requests = _requests()
    kind = kinds["moe_router"]
    rows, where = score.pack(requests, 512)
    row = rows[0]
    n = len(row.tokens)
    tokens = np.zeros((1, 512), np.int32)
    pos = np.zeros((1, 512), np.int32)
    tokens[0, :n], pos[0, :n] = row.tokens, row.depth
    packed = kind.route(tokens, pos, row.mask(512)[None])[0]
    for req in requests:
        node, path = -1, []
        for t in req.input_ids:
            node = row.child[(node, t)]
            path.append(node)
        alone = kind.route(np.asarray([req.input_ids]), np.arange(len(req.input_ids))[None],
                           np.tril(np.ones((1, len(req.input_ids), len(req.input_ids)), bool)))[0]
        np.testing.assert_array_equal(packed[path], alone)


def test_plain_router_forward_equals_its_tree_form():
    rcfg = RouterConfig(vocab_size=50, n_experts=3, d_model=16, d_ff=16, n_heads=2, max_seq_len=64)
    graphdef, state = nnx.split(init_router(rcfg, rngs=nnx.Rngs(2)))
    ids = np.random.default_rng(0).integers(0, 50, (2, 12)).astype(np.int32)
    plain = np.asarray(router_logits(graphdef, state, ids))
    tree = np.asarray(router_logits(graphdef, state, ids, np.broadcast_to(np.arange(12), (2, 12)),
                                    mask_BLS=np.tril(np.ones((2, 12, 12), bool))))
    np.testing.assert_allclose(tree, plain, rtol=1e-5, atol=1e-6)


def test_packing_splits_rows_at_the_length_and_keeps_every_request():
    requests = [score.Encoded(tuple(range(4 + i, 24 + i)), (1, 2)) for i in range(60)]
    rows, where = score.pack(requests, 64)
    assert all(len(r.tokens) <= 64 for r in rows) and len(rows) > 1
    for req, (r, qs) in zip(requests, where):  # each query asks for the right token at the right node
        asked = {q: key for key, q in rows[r].queries.items()}
        node = -1
        for t in req.input_ids:
            node = rows[r].child[(node, t)]
        assert asked[qs[-1]] == (node, req.target_ids[-1])
        assert [rows[r].tokens[n] for n, _ in (asked[q] for q in qs)] == [req.input_ids[-2], req.input_ids[-1]]
    with pytest.raises(Exception, match="does not fit a row of 8"):
        score.pack(requests, 8)


def test_a_group_split_over_several_row_chunks_scores_the_same(kinds, monkeypatch):
    """Six documents behind one 20-token trunk fill two 128-token suffix rows, run one row per forward."""
    monkeypatch.setattr(trunks, "TRUNK_MIN", 16)
    monkeypatch.setattr(trunks, "SUFFIX_ROW", 128)
    monkeypatch.setattr(trunks, "MAX_ROWS", 1)
    rng = np.random.default_rng(3)
    trunk = [1] + list(rng.integers(4, 97, 19))
    requests = [score.Encoded(tuple(trunk + list(rng.integers(4, 97, 40))), (7, 9)) for _ in range(6)]
    for name in ("dense", "moe_router"):
        got = score.score(kinds[name], requests, progress=False)
        assert got["trunks"] == 1 and got["rows"] == 2
        for req, lp, greedy in zip(requests, got["logprob"], got["greedy"]):
            ref_lp, ref_greedy = _alone(kinds[name], req)
            assert lp == pytest.approx(ref_lp, abs=1e-4) and greedy == ref_greedy, name


def test_tasks_of_one_row_length_share_the_backbone_compilation(kinds):
    """The query count differs per task; it must not recompile the backbone (half a minute for a real MoE)."""
    kind = kinds["moe_router"]
    few = [score.Encoded((1, 5, 6, 7), (8,))]  # 1 query: Q = 8
    many = [score.Encoded(tuple(range(1, 31)), tuple(range(40, 60)))]  # 20 queries: Q = 32
    score._tree_hidden.clear_cache()  # other tests in this process may have compiled these shapes already
    score.query_scores.clear_cache()
    score.score(kind, few, progress=False)
    assert (score._tree_hidden._cache_size(), score.query_scores._cache_size()) == (1, 1)
    score.score(kind, many, progress=False)
    assert score._tree_hidden._cache_size() == 1  # same row shape: no new backbone program
    assert score.query_scores._cache_size() == 2  # only the small head program is new
