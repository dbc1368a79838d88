"""Multi-process training on one machine: 2 processes x 2 fake CPU devices (gloo collectives) on one global
mesh train exactly like one process over 4 devices, and checkpoints move between the two process counts.

One chain of runs covers every claim, on the tiny preset with ``mesh=fsdp=2,tensor=2`` (parameters split over
both processes) and a checkpoint after every step:

1. a reference: this process, 4 of its 8 fake devices, uninterrupted, every checkpoint kept;
2. 2 processes resume the reference's checkpoint of step 2 (1 -> 2 processes), steps slowed down; one of them
   is killed with SIGKILL mid-run;
3. this process resumes the last complete checkpoint the killed job left (2 -> 1 processes) and finishes.

The metrics of all 10 steps (those of the 2-process steps included) and the exported parameters of the chain
equal the reference bit for bit. A job of 2 processes compiles both steps in each process (jax's persistent
cache serves process 0 only), so the chain has just one such job. (Its processes must compile with the same XLA
flags as this one: at ``--xla_backend_optimization_level=0`` compiles take half the time but parameters drift
by up to 3e-6 from the reference over the 10 steps.)
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from readme_jax.data.fixtures import fixture_source
from train.checkpoint import Checkpointer
from train.config import make_config

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = ("mesh=fsdp=2,tensor=2", "save_every=1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir, moe_folder, stop_after=0, step_sleep=0.0):
    """Start the 2 processes of one job; returns their Popen objects (process 0 first), output in log files."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{_free_port()}", "JAX_NUM_PROCESSES": "2",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "READMEJAX_TEST_STEP_SLEEP": str(step_sleep)}
    cmd = [sys.executable, "-m", "tests.train.dist_child", str(workdir), str(moe_folder), str(stop_after),
           *OVERRIDES]
    procs = []
    for i in range(2):
        log = open(Path(workdir).parent / f"{Path(workdir).name}-{time.monotonic_ns()}-{i}.log", "w+b")
        proc = subprocess.Popen(cmd, env={**env, "JAX_PROCESS_ID": str(i)}, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT)
        proc.log = log
        procs.append(proc)
    return procs


def _output(proc) -> str:
    proc.log.seek(0)
    return proc.log.read().decode(errors="replace")[-3000:]


def _in_process(workdir, moe_folder, overrides=()):
    from train.run import train

    cfg = make_config("tiny", [*OVERRIDES, "devices=4", *overrides])
    return train(cfg, workdir, moe_folder, progress=False, domains=fixture_source())


def _metrics(workdir):
    rows = [json.loads(line) for line in (Path(workdir) / "train" / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]


def test_two_processes_train_like_one_and_share_checkpoints(tmp_path, moe_folder):
    import readme_jax

    if len(jax.devices()) < 4:
        pytest.skip("needs 4 of the fake CPU devices of tests/conftest.py")
    ref, work = tmp_path / "ref", tmp_path / "chain"
    assert _in_process(ref, moe_folder, ["max_to_keep=10"])["global_steps"] == 10
    (work / "train" / "ckpt").mkdir(parents=True)
    shutil.copytree(ref / "train" / "ckpt" / "2", work / "train" / "ckpt" / "2")
    shutil.copy(ref / "train" / "metrics.jsonl", work / "train")  # the resumed run keeps the lines up to step 2

    ckpt = Checkpointer(work / "train" / "ckpt", save_every=1)
    procs = _launch(work, moe_folder, step_sleep=0.5)
    deadline = time.time() + 240
    while (ckpt.latest_step() or 0) < 5:  # the 2-process job restored step 2 and made progress
        for p in procs:
            assert p.poll() is None, _output(p)
        assert time.time() < deadline, "the 2-process job made no checkpoint in time"
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()
    # The survivor cannot finish its next collective; whatever it does, the job is over.
    try:
        procs[0].wait(timeout=5)
    except subprocess.TimeoutExpired:
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
    killed_at = ckpt.latest_step()
    assert 5 <= killed_at < 10, killed_at
    assert ckpt.read_meta(killed_at)["global_step"] == killed_at

    # 2 -> 1 process: the killed job's last complete checkpoint restores here, and the run finishes.
    assert _in_process(work, moe_folder)["global_steps"] == 10

    assert _metrics(work) == _metrics(ref)
    a, b = readme_jax.load(str(ref / "moe_trained"), form="masked"), readme_jax.load(str(work / "moe_trained"),
                                                                                   form="masked")
    for x, y in zip(jax.tree.leaves((a.state, a.router_state)), jax.tree.leaves((b.state, b.router_state))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_mesh_the_processes_cannot_fill_is_refused(monkeypatch):
    """With several processes the mesh must cover every process's devices: a subset, or sizes whose product is
    not the job's device count, fail with the process layout in the message."""
    from readme_jax.errors import ReadmeJaxError
    from train.loop import make_train_mesh

    n = len(jax.devices())
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "local_device_count", lambda: n // 2)
    with pytest.raises(ReadmeJaxError, match=f"devices=2: a multi-process job \\(2 processes x {n // 2} local"):
        make_train_mesh(make_config("tiny", ["devices=2", "mesh=data=2"]))
    with pytest.raises(ReadmeJaxError, match=f"do not match the {n} devices \\(2 processes x {n // 2} local"):
        make_train_mesh(make_config("tiny", [f"mesh=data={n + 1}"]))
