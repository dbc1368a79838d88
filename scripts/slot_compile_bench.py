"""Compile and run time of the sliced MoE's backbone forward under different tail-chunk sets (kernels/gmm/slotted.py).

``slot_mlp`` compiles every tail size once per slot per layer, so at prefill sizes the set of tail sizes decides
how long a new input shape takes to compile (the scoring and perplexity programs meet many shapes). This runs
one jitted ``hidden`` forward of a MoE folder for a few shapes, once with the current rule
(``kernels.gmm.slotted.chunk_sizes``) and once with every listed tail size (``--compare``: the rule before
2026-12-07), each in a fresh process so that nothing is cached, and prints: the first (compiling) call, the best
of ``--repeats`` later calls, and the largest difference between the two outputs relative to their largest value
(0 when bitwise equal; rows are computed in other chunk heights, so the float sums may round differently).

    flock /tmp/cpu.lock .venv/bin/python scripts/slot_compile_bench.py --folder out/demo/moe_trained
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ((4, 512, 64), (1, 512, 1), (1, 256, 8), (8, 512, 4))  # (B, L, tokens per route run)
ALL_TAILS = "8,12,16,24,32,48,64,96,128"  # what T > 128 used before: every TAILS entry from 8 up


def child(folder: str, B: int, L: int, run: int, tails: str, repeats: int, out: str) -> None:
    """One measurement in this process: print a JSON line, save the output array to ``out``."""
    import time

    import numpy as np

    sys.path.insert(0, str(ROOT))
    import kernels.gmm.slotted as slotted

    if tails:
        sizes, rule = tuple(int(t) for t in tails.split(",")), slotted.chunk_sizes

        def fixed(n):
            return rule(n) if n <= slotted.BIG_ROWS else (slotted.BIG_ROWS, sizes)

        slotted.chunk_sizes = fixed
    from functools import partial

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from readme_jax.moe_io import load_moe

    model = load_moe(Path(folder))[0]
    graphdef, state = nnx.split(model)

    @partial(jax.jit, static_argnums=0)
    def hidden(graphdef, state, tokens_BL, pos_BL, mask_BLL, route_BL):
        x_BLD, _ = nnx.merge(graphdef, state).hidden(tokens_BL, pos_BL, None, route=route_BL, mask_BLS=mask_BLL)
        return x_BLD

    rng = np.random.default_rng(0)
    tokens_BL = jnp.asarray(rng.integers(0, model.cfg.vocab_size, (B, L)), jnp.int32)
    pos_BL = jnp.broadcast_to(jnp.arange(L), (B, L))
    mask_BLL = jnp.broadcast_to(jnp.tril(jnp.ones((L, L), bool)), (B, L, L))
    runs = rng.integers(0, model.cfg.n_experts, (B, -(-L // run)))
    route_BL = jnp.asarray(np.repeat(runs, run, axis=1)[:, :L], jnp.int32)
    args = (graphdef, state, tokens_BL, pos_BL, mask_BLL, route_BL)
    t0 = time.perf_counter()
    x_BLD = hidden(*args).block_until_ready()
    first = time.perf_counter() - t0
    steady = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        hidden(*args).block_until_ready()
        steady.append(time.perf_counter() - t0)
    np.save(out, np.asarray(x_BLD))
    print(json.dumps({"first": first, "steady": min(steady),
                      "tails": list(slotted.chunk_sizes(B * L)[1])}))


def measure(folder, shape, tails, repeats, out) -> dict:
    B, L, run = shape
    cmd = [sys.executable, __file__, "--child", folder, str(B), str(L), str(run), tails, str(repeats), out]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode:
        raise SystemExit(f"measurement {shape} tails={tails or 'current'} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        folder, B, L, run, tails, repeats, out = argv[1:]
        return child(folder, int(B), int(L), int(run), tails, int(repeats), out)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", default="out/demo/moe_trained", help="a Read-ME MoE folder")
    ap.add_argument("--compare", default=ALL_TAILS, help="tail sizes (T > 128) to compare with the current rule")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    import numpy as np

    print(f"sliced MoE backbone forward, {args.folder}; seconds; tails for T > 128: current rule vs {args.compare}")
    print(f"{'B x L':>8} {'run':>4}  {'current tails':<16}{'first':>7}{'steady':>8}   {'compare first':>13}"
          f"{'steady':>8}   {'first ratio':>11}  {'max rel diff':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for shape in SHAPES:
            new = measure(args.folder, shape, "", args.repeats, f"{tmp}/new.npy")
            old = measure(args.folder, shape, args.compare, args.repeats, f"{tmp}/old.npy")
            x_new, x_old = np.load(f"{tmp}/new.npy"), np.load(f"{tmp}/old.npy")
            diff = float(np.abs(x_new - x_old).max() / np.abs(x_old).max())
            B, L, run = shape
            print(f"{f'{B} x {L}':>8} {run:>4}  {','.join(map(str, new['tails'])):<16}{new['first']:>7.1f}"
                  f"{new['steady']:>8.2f}   {old['first']:>13.1f}{old['steady']:>8.2f}   "
                  f"{new['first'] / old['first']:>11.2f}  {diff:>12.1e}", flush=True)


if __name__ == "__main__":
    main()
