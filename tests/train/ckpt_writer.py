"""Child process for the SIGKILL test: saves async checkpoints back to back until it is killed.

Step i holds arrays filled with i (a few MB, so a write takes long enough to be interrupted).
Run as ``python -m tests.train.ckpt_writer DIRECTORY`` from the repo root.
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax.numpy as jnp
import numpy as np

from train.checkpoint import Checkpointer

# float32 [1M] = 4 MiB per step: big enough that the parent can catch a write in flight.
N_BIG = 1 << 20


def state_for(step: int) -> dict:
    return {
        "big_n": jnp.full((N_BIG,), step, jnp.float32),
        "layer": {"w_dd": jnp.full((64, 64), step, jnp.bfloat16), "count": np.full((3,), step, np.int32)},
    }


def main(directory: str) -> None:
    ckpt = Checkpointer(directory, save_every=1, max_to_keep=3, async_save=True)
    step = 1
    while True:  # the parent ends this with SIGKILL
        # save() waits for the previous async write, then starts the next one in the background.
        ckpt.save(step, state_for(step), {"step": step, "fingerprint": {"d_model": 64}})
        step += 1


if __name__ == "__main__":
    main(sys.argv[1])
