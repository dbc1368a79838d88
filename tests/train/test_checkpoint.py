"""train.checkpoint: round trips, sharded restore, retention, fingerprint checks, SIGKILL safety."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from readme_jax.errors import ReadmeJaxError
from train.checkpoint import Checkpointer, fingerprint_diff

REPO_ROOT = Path(__file__).resolve().parents[2]
FINGERPRINT = {"d_model": 64, "n_layers": 2, "router": {"n_experts": 8}}


def _state(value: int = 1) -> dict:
    return {
        "params": {
            "w_dd": jnp.full((8, 16), value, jnp.float32) + jnp.arange(16, dtype=jnp.float32)[None, :],
            "emb_vd": jnp.full((12, 8), value, jnp.bfloat16),
        },
        "opt": {"count": jnp.array(value, jnp.int32), "mu_d": np.arange(5, dtype=np.int32) * value},
        "rng_key": jax.random.key_data(jax.random.key(value)),  # uint32 [2]
    }


def _meta(step: int) -> dict:
    return {"round": 1, "stage": "router", "step_in_stage": step, "data_pos": [3, 128 * step],
            "rng": [0, step], "fingerprint": FINGERPRINT}


def _abstract(state, sharding=None):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def _assert_tree_equal(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32))


# (a) round trip --------------------------------------------------------------------------------
@pytest.mark.parametrize("async_save", [True, False])
def test_round_trip_dtypes_and_meta(tmp_path, async_save):
    state = _state(3)
    assert state["rng_key"].dtype == jnp.uint32
    with Checkpointer(tmp_path / "ck", save_every=5, async_save=async_save) as ckpt:
        assert ckpt.save(5, state, _meta(5))
        ckpt.wait()
        assert ckpt.latest_step() == 5
        restored, meta = ckpt.restore(_abstract(state), expect_fingerprint=FINGERPRINT)
        assert ckpt.read_meta() == meta
    _assert_tree_equal(restored, state)
    assert meta == _meta(5)
    # A fresh instance (a resumed run) sees the same checkpoint.
    with Checkpointer(tmp_path / "ck", save_every=5) as again:
        assert again.latest_step() == 5
        assert again.read_meta(5)["data_pos"] == [3, 640]


def test_numpy_leaf_in_abstract_restores_as_numpy(tmp_path):
    state = _state(2)
    with Checkpointer(tmp_path, save_every=1) as ckpt:
        ckpt.save(1, state, _meta(1))
        abstract = _abstract(state)
        abstract["opt"]["mu_d"] = np.zeros(5, np.int32)
        restored, _ = ckpt.restore(abstract)
    assert isinstance(restored["opt"]["mu_d"], np.ndarray)
    _assert_tree_equal(restored, state)


# (b) sharded state ----------------------------------------------------------------------------
def test_sharded_restore_uses_requested_sharding(tmp_path):
    assert len(jax.devices()) == 8, "conftest should force 8 host devices"
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    w_dd = jax.device_put(jnp.arange(8 * 16, dtype=jnp.float32).reshape(8, 16), NamedSharding(mesh, P("data", "model")))
    b_d = jax.device_put(jnp.arange(16, dtype=jnp.bfloat16), NamedSharding(mesh, P("model")))
    key = jax.device_put(jax.random.key_data(jax.random.key(7)), NamedSharding(mesh, P()))
    state = {"w_dd": w_dd, "b_d": b_d, "key": key}
    with Checkpointer(tmp_path, save_every=1) as ckpt:
        ckpt.save(1, state, _meta(1))
        ckpt.wait()
        # Same layout as saved.
        same = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding) for k, v in state.items()}
        restored, _ = ckpt.restore(same)
        for k in state:
            assert restored[k].sharding == state[k].sharding, k
        _assert_tree_equal(restored, state)
        # A different layout (e.g. resuming on another mesh split) is resharded on load.
        other = {
            "w_dd": NamedSharding(mesh, P("model", None)),
            "b_d": NamedSharding(mesh, P()),
            "key": NamedSharding(mesh, P()),
        }
        wanted = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=other[k]) for k, v in state.items()}
        restored, _ = ckpt.restore(wanted)
    for k in state:
        assert restored[k].sharding == other[k], k
    _assert_tree_equal(restored, state)


# (c) retention and gating ---------------------------------------------------------------------
def test_save_every_max_to_keep_and_force(tmp_path):
    state = _state(1)
    with Checkpointer(tmp_path, save_every=3, max_to_keep=2) as ckpt:
        assert not ckpt.should_save(0)
        saved = [step for step in range(13) if ckpt.save(step, state, _meta(step))]
        assert saved == [3, 6, 9, 12]
        ckpt.wait()
        assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [9, 12]
        # Off-schedule save (e.g. end of a stage) only with force.
        assert not ckpt.save(13, state, _meta(13))
        assert ckpt.save(13, state, _meta(13), force=True)
        # A step already on disk is not rewritten (resume re-reaching its own step).
        assert not ckpt.save(13, state, _meta(13), force=True)
        ckpt.wait()
        assert ckpt.latest_step() == 13
        assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [12, 13]
        with pytest.raises(ReadmeJaxError, match="step 9"):
            ckpt.read_meta(9)


def test_bad_arguments(tmp_path):
    with pytest.raises(ReadmeJaxError, match="save_every"):
        Checkpointer(tmp_path, save_every=0)
    with Checkpointer(tmp_path, save_every=1) as ckpt:
        with pytest.raises(ReadmeJaxError, match="JSON"):
            ckpt.save(1, _state(), {"bad": object()})
        assert ckpt.latest_step() is None
        ckpt.save(2, _state(), _meta(2))
        with pytest.raises(ReadmeJaxError, match="does not fit"):
            ckpt.restore({"w_dd": jax.ShapeDtypeStruct((8, 16), jnp.float32)})


# (d) fingerprint and missing checkpoints -------------------------------------------------------
def test_fingerprint_mismatch_names_the_key_before_loading(tmp_path):
    with Checkpointer(tmp_path, save_every=1) as ckpt:
        ckpt.save(1, _state(), _meta(1))
        ckpt.wait()
        other = {"d_model": 576, "n_layers": 2, "router": {"n_experts": 4}}
        # A bogus abstract tree would fail in orbax; the fingerprint error must come first.
        with pytest.raises(ReadmeJaxError) as info:
            ckpt.restore({"not": "the state"}, expect_fingerprint=other)
    msg = str(info.value)
    assert "from another model" in msg and str(tmp_path) in msg
    assert "d_model 64 != 576" in msg and "router.n_experts 8 != 4" in msg
    assert "n_layers" not in msg


def test_fingerprint_diff_missing_keys_and_tuples():
    assert fingerprint_diff({"a": [1, 2]}, {"a": (1, 2)}) == []
    assert fingerprint_diff({"a": 1}, {"b": 2}) == ["a 1 != <missing>", "b <missing> != 2"]


def test_missing_or_empty_directory(tmp_path):
    missing = tmp_path / "nope"
    ckpt = Checkpointer(missing, save_every=1)
    assert ckpt.latest_step() is None
    with pytest.raises(ReadmeJaxError, match=f"no checkpoint found in {missing}"):
        ckpt.restore(_abstract(_state()))
    with pytest.raises(ReadmeJaxError, match="no checkpoint found"):
        ckpt.read_meta()
    ckpt.close()
    assert not missing.exists(), "a reader must not create the directory"
    (tmp_path / "empty").mkdir()
    with Checkpointer(tmp_path / "empty", save_every=1) as ckpt:
        with pytest.raises(ReadmeJaxError, match="no checkpoint found"):
            ckpt.restore(_abstract(_state()))


def test_unfinished_temporary_folder_is_ignored_then_cleaned(tmp_path):
    with Checkpointer(tmp_path, save_every=1) as ckpt:
        ckpt.save(1, _state(1), _meta(1))
    # What a kill mid-write leaves: a higher step, never renamed into place.
    junk = tmp_path / "7.orbax-checkpoint-tmp"
    (junk / "state").mkdir(parents=True)
    (junk / "state" / "garbage").write_bytes(b"\0" * 10)
    with Checkpointer(tmp_path, save_every=1) as ckpt:
        assert ckpt.latest_step() == 1
        assert ckpt.read_meta()["step_in_stage"] == 1
        ckpt.save(2, _state(2), _meta(2))  # the writer's first save removes leftovers
        ckpt.wait()
        assert not junk.exists()
        assert ckpt.latest_step() == 2


# (e) SIGKILL mid-write -------------------------------------------------------------------------
def _tmp_dirs(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if ".orbax-checkpoint-tmp" in p.name] if directory.exists() else []


def test_sigkill_while_writing_leaves_a_restorable_latest(tmp_path):
    from tests.train.ckpt_writer import state_for

    directory = tmp_path / "ck"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT))
    log = (tmp_path / "child.log").open("wb")
    child = subprocess.Popen([sys.executable, "-m", "tests.train.ckpt_writer", str(directory)],
                             cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    reader = Checkpointer(directory, save_every=1)
    try:
        deadline = time.monotonic() + 60
        # Kill only once >= 2 steps are final AND a next step is being written (its temp folder exists).
        while True:
            if child.poll() is not None:
                pytest.fail(f"writer exited early:\n{(tmp_path / 'child.log').read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("writer did not produce 2 checkpoints in 60 s")
            steps = reader._finalized_steps()
            if len(steps) >= 2 and _tmp_dirs(directory):
                break
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        log.close()
    assert child.returncode == -signal.SIGKILL

    with Checkpointer(directory, save_every=1) as ckpt:
        latest = ckpt.latest_step()
        assert latest is not None and latest >= 2
        # The step being written at the kill (if it did not finish first) is still a temp folder.
        assert all(p.name != str(latest) for p in _tmp_dirs(directory))
        want = state_for(latest)
        restored, meta = ckpt.restore(_abstract(want), expect_fingerprint={"d_model": 64})
        assert meta["step"] == latest
        _assert_tree_equal(restored, want)
