"""One process of a multi-process training job on this machine, for tests/train/test_multiprocess.py.

Usage: ``python -m tests.train.dist_child WORKDIR MOE_FOLDER STOP_AFTER [KEY=VALUE ...]`` with
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID set (or none of them: a plain one-process run).
The run is the tiny preset with the KEY=VALUE overrides; STOP_AFTER > 0 ends it with a checkpoint after that
many global steps. READMEJAX_TEST_STEP_SLEEP slows every step so the parent can kill a process mid-run.
"""

import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from readme_jax.data.fixtures import fixture_source  # noqa: E402
from train import loop, sharding  # noqa: E402
from train.config import make_config  # noqa: E402
from train.run import train  # noqa: E402


def main(workdir: str, moe: str, stop_after: str, *overrides: str) -> None:
    sharding.maybe_initialize_distributed()
    delay = float(os.environ.get("READMEJAX_TEST_STEP_SLEEP", "0"))
    if delay:
        step = loop.Trainer._step

        def slow_step(self, *args, **kwargs):
            out = step(self, *args, **kwargs)
            time.sleep(delay)
            return out

        loop.Trainer._step = slow_step
    cfg = make_config("tiny", overrides)
    train(cfg, workdir, moe, progress=False, domains=fixture_source(), stop_after=int(stop_after) or None)


if __name__ == "__main__":
    main(*sys.argv[1:])
