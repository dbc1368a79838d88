"""The serving engine on whatever device jax has (the GPU check's engine part): one JSON object on stdout.

A random Read-ME MoE folder is built in a temporary folder (no checkpoint is needed: the machine is offline)
with ``--d-model``/``--layers`` large enough that expert loads are real transfers. Measured:

1. host->device bandwidth of one expert's arrays: from ``pinned_host`` arrays and from numpy;
2. overlap: a decode step alone, one expert's transfer alone, and both issued together;
3. a closed-loop engine run at two capacities x two cache policies (expert-aware batching): hit ratio, bytes
   moved (and bytes copied), stall seconds, normalized latency p50/p95, tokens/s.

    python scripts/gpu_engine_check.py [--d-model 1024] [--layers 8] [--requests 24]
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_folder(root: Path, d_model: int, layers: int, experts: int):
    import numpy as np
    from flax import nnx

    from readme_jax import refactor
    from readme_jax.config import LlamaConfig
    from readme_jax.lm import jax_to_numpy
    from readme_jax.model import Llama
    from readme_jax.moe_io import save_moe
    from readme_jax.router import RouterConfig, init_router
    from tests.model.test_loaders import VOCAB, tiny_tokenizer

    cfg = LlamaConfig(vocab_size=VOCAB, d_model=d_model, n_layers=layers, n_heads=d_model // 64,
                      n_kv_heads=max(1, d_model // 256), d_ff=4 * d_model, max_seq_len=1024, eos_ids=(258,),
                      pad_id=256, tie_embeddings=False)
    weights = jax_to_numpy(nnx.to_pure_dict(nnx.split(Llama(cfg, rngs=nnx.Rngs(0)))[1]))
    masks = refactor.domain_masks(np.random.default_rng(1).random((experts, layers, cfg.d_ff)), 0.5)
    rcfg = RouterConfig(vocab_size=VOCAB, n_experts=experts, d_model=64, d_ff=128, n_heads=2, max_seq_len=1024)
    router = jax_to_numpy(nnx.to_pure_dict(nnx.state(init_router(rcfg, rngs=nnx.Rngs(2)))))
    names = tuple(f"d{i}" for i in range(experts))
    return save_moe(root / "moe", cfg, weights, masks, names, 0.5, tiny_tokenizer(), router=(rcfg, router))


def bandwidth(engine) -> dict:
    import jax
    import numpy as np

    store = engine.store
    arrays = list(store.bank[0].values())
    out = {"expert_bytes": store.expert_bytes, "host_memory_kind": getattr(store, "host_memory_kind", "?")}
    for name, source in (("pinned_host", arrays), ("numpy", [np.asarray(a) for a in arrays])):
        jax.block_until_ready(jax.device_put(source, store.sharding))
        t0 = time.perf_counter()
        for _ in range(3):
            jax.block_until_ready(jax.device_put(source, store.sharding))
        out[f"{name}_GBps"] = 3 * store.expert_bytes / (time.perf_counter() - t0) / 1e9
    return out


def overlap(engine, prompt) -> dict:
    """Seconds of one decode step, one expert transfer, and both issued together."""
    import jax

    from readme_jax.generate import SamplingParams

    engine.reset(cache_policy="lru")
    rid = engine.submit(prompt, SamplingParams(max_new_tokens=400))
    engine.step()
    engine.step()
    store = engine.store
    spare = next(e for e in range(engine.num_experts) if e not in store.resident())
    arrays = list(store.bank[spare].values())

    def transfer():
        return jax.device_put(arrays, store.sharding)

    def step():
        t0 = time.perf_counter()
        engine.step()
        return time.perf_counter() - t0

    times = {"step_s": min(step() for _ in range(3))}
    t0 = time.perf_counter()
    jax.block_until_ready(transfer())
    times["transfer_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    staged = transfer()
    engine.step()
    jax.block_until_ready(staged)
    times["both_s"] = time.perf_counter() - t0
    times["overlap"] = (times["step_s"] + times["transfer_s"] - times["both_s"]) / min(times["step_s"],
                                                                                      times["transfer_s"])
    engine.abort(rid)
    engine.run_until_done()
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--experts", type=int, default=6)
    p.add_argument("--requests", type=int, default=24)
    p.add_argument("--new-tokens", type=int, default=24)
    args = p.parse_args(argv)

    import jax
    import numpy as np

    from serve.core.metrics import summarize
    from serve.core.types import RequestSpec
    from serve.engine import Engine
    from serve.engine.replay import replay

    device = jax.devices()[0]
    result = {"device": f"{device.platform} {device.device_kind}", "jax": jax.__version__, "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(build_folder(Path(tmp), args.d_model, args.layers, args.experts))
        rng = np.random.default_rng(0)
        specs = [RequestSpec(f"r{i}", 0.0, (0,) * n, (), args.new_tokens,
                             prompt_ids=tuple(int(t) for t in rng.integers(1, 250, size=n)), live=True)
                 for i, n in enumerate(rng.integers(8, 96, size=args.requests))]
        runs = []
        for slots in (2, args.experts // 2):
            engine = Engine.load(folder, slots=slots, max_seqs=8)
            if "bandwidth" not in result:
                result["bandwidth"] = bandwidth(engine)
                result["overlap"] = overlap(engine, list(specs[0].prompt_ids))
            replay(engine, specs, concurrency=8)  # compiles
            for policy in ("belady", "lru"):
                engine.reset(cache_policy=policy)
                t0 = time.perf_counter()
                summary = summarize(replay(engine, specs, concurrency=8))
                stats = engine.stats()
                runs.append({"slots": slots, "cache": policy, "wall_s": time.perf_counter() - t0,
                             **{k: stats[k] for k in ("hit_ratio", "loads", "bytes_moved", "bytes_copied", "stall_s",
                                                      "compiles")},
                             "normalized_latency_s": summary["normalized_latency_s"],
                             "tokens_per_s": summary["throughput_tokens_per_s"]})
        result["runs"] = runs
    print(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
