"""Multi-process training on one machine: 2 processes x 2 fake CPU devices (gloo collectives) on one global
mesh train exactly like one process over 4 devices, and checkpoints move between the two process counts.

One chain of runs covers every claim, on the tiny preset with ``mesh=fsdp=2,tensor=2`` (parameters split over
both processes) and a checkpoint after every step:

1. a reference: this process, 4 of its 8 fake devices, uninterrupted;
2. this process again, stopped after 2 steps (a 1-process checkpoint);
3. 2 processes resume it (1 -> 2 processes), steps slowed down; one of them is killed with SIGKILL mid-run;
4. this process resumes the last complete checkpoint the killed job left (2 -> 1 processes), for 1 step;
5. 2 processes resume that and finish the run.

The metrics of all 10 steps and the exported parameters of the chain equal the reference bit for bit.
"""

import json
import os
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
from tests.train.test_train import moe_folder  # noqa: F401  (the tiny MoE folder fixture)
from train.checkpoint import Checkpointer
from train.config import make_config

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = ("mesh=fsdp=2,tensor=2", "save_every=1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir, moe_folder, stop_after=0, step_sleep=0.0, cache=None):
    """Start the 2 processes of one job; returns their Popen objects (process 0 first), output in log files."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{_free_port()}", "JAX_NUM_PROCESSES": "2",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "READMEJAX_TEST_STEP_SLEEP": str(step_sleep)}
    if cache:  # process 0 reuses its compiled steps in the next job (jax only caches on process 0)
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
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


def _wait(procs, timeout=300):
    for p in procs:
        p.wait(timeout=timeout)
        assert p.returncode == 0, _output(p)


def _in_process(workdir, moe_folder, stop_after=None):
    from train.run import train

    cfg = make_config("tiny", [*OVERRIDES, "devices=4"])
    return train(cfg, workdir, moe_folder, progress=False, domains=fixture_source(), stop_after=stop_after)


def _metrics(workdir):
    rows = [json.loads(line) for line in (Path(workdir) / "train" / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]


def test_two_processes_train_like_one_and_share_checkpoints(tmp_path, moe_folder):
    import readme_jax

    if len(jax.devices()) < 4:
        pytest.skip("needs 4 of the fake CPU devices of tests/conftest.py")
    ref, work, cache = tmp_path / "ref", tmp_path / "chain", tmp_path / "jax-cache"
    assert _in_process(ref, moe_folder)["global_steps"] == 10
    assert _in_process(work, moe_folder, stop_after=2) == {"stopped_at": 2}

    ckpt = Checkpointer(work / "train" / "ckpt", save_every=1)
    procs = _launch(work, moe_folder, step_sleep=0.5, cache=cache)
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
        procs[0].wait(timeout=20)
    except subprocess.TimeoutExpired:
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
    killed_at = ckpt.latest_step()
    assert 5 <= killed_at < 9, killed_at
    assert ckpt.read_meta(killed_at)["global_step"] == killed_at

    # 2 -> 1 process: the killed job's last complete checkpoint restores here, for one more step.
    assert _in_process(work, moe_folder, stop_after=killed_at + 1) == {"stopped_at": killed_at + 1}
    # 1 -> 2 processes again, to the end.
    _wait(_launch(work, moe_folder, cache=cache))

    assert _metrics(work) == _metrics(ref)
    a, b = readme_jax.load(str(ref / "moe_trained"), form="masked"), readme_jax.load(str(work / "moe_trained"),
                                                                                   form="masked")
    for x, y in zip(jax.tree.leaves((a.state, a.router_state)), jax.tree.leaves((b.state, b.router_state))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
