"""A live uvicorn server on loopback, in a thread of the test process (one engine thread per server)."""

import contextlib

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed (make setup)")


@contextlib.contextmanager
def live_server(engine, **config):
    from serve.http.app import ServerConfig, create_app
    from serve.http.server import in_thread

    app = create_app(engine, ServerConfig(**config))
    with in_thread(app, startup_s=30) as url:
        yield url, app.state.server


def small_engine():
    """The engine every server test shares (one compile for the whole session)."""
    from tests.serve.http.fake_engine import FakeEngine

    return FakeEngine(max_seqs=4, step_s=0.01)


@pytest.fixture(scope="session")
def engine():
    eng = small_engine()
    yield eng


@pytest.fixture(scope="session")
def real_engine(tmp_path_factory):
    """The real engine over a tiny random Read-ME MoE with 2 of its 4 experts on the device (what the load and
    fuzz tests serve: a small model, not a mock)."""
    from serve.engine import Engine

    return Engine.load(str(tiny_moe_folder(tmp_path_factory.mktemp("served") / "moe")), slots=2, max_seqs=4)


class StreamTally:
    """Counts an SSE stream's token chunks as its lines arrive: ``feed`` returns True on a token chunk."""

    def __init__(self):
        self.chunks, self.usage, self.finish, self.done = 0, None, None, False

    def feed(self, line: str) -> bool:
        import json

        if not line.startswith("data: ") or self.done:
            return False
        if line == "data: [DONE]":
            self.done = True
            return False
        chunk = json.loads(line[6:])
        if not chunk["choices"]:
            self.usage = chunk["usage"]
            return False
        self.chunks += 1
        self.finish = chunk["choices"][0]["finish_reason"] or self.finish
        return True


def tiny_moe_folder(root):
    """A tiny random Read-ME MoE folder with a (random) router and a byte-level BPE tokenizer with a chat
    template: what Engine.load and readme_jax.load both take."""
    import numpy as np
    from flax import nnx

    from readme_jax import refactor
    from readme_jax.lm import jax_to_numpy
    from readme_jax.moe_io import save_moe
    from readme_jax.router import RouterConfig, init_router
    from tests.helpers import tiny_config, tiny_model
    from tests.model.test_loaders import VOCAB, tiny_tokenizer

    cfg = tiny_config(vocab_size=VOCAB, eos_ids=(258,), pad_id=256)
    weights = jax_to_numpy(nnx.to_pure_dict(nnx.split(tiny_model(cfg, seed=11))[1]))
    masks_NEF = refactor.domain_masks(np.random.default_rng(4).random((4, cfg.n_layers, cfg.d_ff)), 0.5)
    rcfg = RouterConfig(vocab_size=VOCAB, n_experts=4, d_model=16, d_ff=16, n_heads=2, max_seq_len=cfg.max_seq_len)
    router = jax_to_numpy(nnx.to_pure_dict(nnx.state(init_router(rcfg, rngs=nnx.Rngs(6)))))
    return save_moe(root, cfg, weights, masks_NEF, ("code", "legal", "quotes", "manuals"), 0.5, tiny_tokenizer(),
                    router=(rcfg, router))


def metric_value(text: str, name: str) -> float:
    """The sum over labels of one metric in Prometheus text."""
    import re

    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", text, re.M))
