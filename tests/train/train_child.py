"""Child process for the SIGKILL test: a tiny training run whose steps are slowed down so the parent can
kill it mid-run. Usage: python -m tests.train.train_child WORKDIR MOE_FOLDER"""

import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from readme_jax.data.fixtures import fixture_source
from train import loop
from train.config import make_config
from train.run import train

_step = loop.Trainer._step


def slow_step(self, *args, **kwargs):
    out = _step(self, *args, **kwargs)
    time.sleep(0.3)  # leave the parent time to kill us between (and during) checkpoint writes
    return out


loop.Trainer._step = slow_step

if __name__ == "__main__":
    cfg = make_config("tiny", ["devices=1", "mesh=data=1", "save_every=1"])
    train(cfg, sys.argv[1], sys.argv[2], progress=False, domains=fixture_source())
