"""Seconds per expert training step, masked against gathered MLP (``--set mlp_compute=mask|gather``).

The real expert step of ``readme-jax train`` (router pre-gating, the masked MoE's forward and backward over
every parameter, AdamW) on a refactored MoE folder, once for the MoE (E experts) and once for its pruned-dense
baseline (``--baseline pruned``, E = 1), with the default preset's batch (4 x 256 tokens). Each step is timed
after one compiling step; the table reports the median and the range of ``--repeats`` steps. The folder's
router routes the batch when it has one (a trained folder: the routes a real expert stage sees); otherwise a
freshly initialised router does.

    flock /tmp/cpu.lock .venv/bin/python scripts/train_step_bench.py [--folder out/demo/moe_trained] [--repeats 3]
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def time_steps(folder: Path, baseline, compute: str, repeats: int, work: Path, domains=None):
    """(seconds of the compiling step, seconds of each later step, expert usage of the batch)."""
    from train.config import make_config
    from train.loop import Trainer
    from train.run import prepare

    cfg = make_config("default", ["devices=1", "mesh=data=1", f"mlp_compute={compute}", "blocks_per_domain=2"])
    setup, _, _ = prepare(cfg, work / f"{baseline}-{compute}", folder, progress=False, domains=domains,
                          baseline=baseline)
    trainer = Trainer(setup, progress=False)
    try:
        opt = trainer._start_stage("expert")
        tokens, idx, _ = setup.stream.take(0, cfg.expert_batch)
        times, usage = [], None
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            opt, metrics = trainer._step("expert", opt, tokens, idx, 1e-4)
            times.append(time.perf_counter() - t0)
            usage = metrics["expert_usage"]
    finally:
        trainer.ckpt.close()
    return times[0], times[1:], usage


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", default="out/demo/moe_trained", help="a Read-ME MoE folder with pruned masks")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=("moe", "pruned"), help="one model only")
    ap.add_argument("--fixtures", action="store_true", help="text from the committed fixtures, not the registry")
    args = ap.parse_args(argv)
    import jax

    domains = None
    if args.fixtures:
        from readme_jax.data.fixtures import fixture_source

        domains = fixture_source()
    models = [("moe", None), ("pruned", "pruned")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, baseline in models:
            if args.only and name != args.only:
                continue
            for compute in ("mask", "gather"):
                first, times, usage = time_steps(Path(args.folder), baseline, compute, args.repeats, Path(tmp),
                                                 domains)
                rows.append((name, len(usage), compute, first, times, usage))
                print(f"{name} E={len(usage)} {compute}: compile+step {first:.1f} s, steps "
                      f"{', '.join(f'{t:.2f}' for t in times)} s", file=sys.stderr, flush=True)
    print(f"expert step, batch 4 x 256 tokens, {args.folder}, jax {jax.__version__} on "
          f"{jax.devices()[0].device_kind}; seconds per step (median [min, max] of {args.repeats})")
    print(f"{'model':<8}{'E':>3}  {'mlp_compute':<12}{'first':>7}{'step':>8}{'range':>16}  {'vs mask':>8}  usage")
    base = {}
    for name, E, compute, first, times, usage in rows:
        med = statistics.median(times)
        base.setdefault(name, med)
        print(f"{name:<8}{E:>3}  {compute:<12}{first:>7.1f}{med:>8.2f}{f'[{min(times):.2f}, {max(times):.2f}]':>16}"
              f"  {med / base[name]:>7.2f}x  {usage}")


if __name__ == "__main__":
    main()
