"""``readme-jax bench generate``: prefill and decode tokens/s, ours vs transformers, side by side.

Both engines get the same prompts, greedy decoding and exactly the same number of new tokens (EOS
ignored). transformers runs the same weights (exported to an HF folder) in torch fp32 on the CPU.
Each cell is the median of ``--repeats`` timed runs after one warm-up run. transformers' decode time is
(time for N new tokens) - (time for 1 new token), measured in interleaved pairs.
"""

import json
import platform
import statistics
import tempfile
import time

PROMPTS = (
    "Write a short poem about the sea.",
    "Explain what a hash table is and when to use one.",
    "What is the capital of France?",
    "List three tips for writing clean Python code, with one example each.",
    "Summarise the plot of Hamlet in two sentences.",
    "How does a CPU cache work?",
    "Translate 'good morning, how are you?' into French and Spanish.",
    "Give me a recipe for pancakes.",
)


def register(sub):
    p = sub.add_parser("bench", help="benchmarks (see: readme-jax bench generate --help)")
    bsub = p.add_subparsers(dest="bench", metavar="WHAT", required=True)
    g = bsub.add_parser("generate", help="prefill/decode tokens/s vs transformers on the same prompts")
    g.add_argument("--model", default="default")
    g.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    g.add_argument("--new-tokens", type=int, default=64)
    g.add_argument("--repeats", type=int, default=3)
    g.add_argument("--no-hf", action="store_true", help="skip transformers (no torch needed)")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    g.set_defaults(func=run_generate)


def _ours(lm, prompts, new_tokens, repeats):
    from readme_jax.generate import SamplingParams, generate_ids

    def run(n):
        timings = {}
        ids = generate_ids(lm.graphdef, lm.state, lm.cfg, prompts, SamplingParams(max_new_tokens=n),
                           eos_ids=(), pad_id=lm.tokenizer.pad_id, timings=timings)
        return ids, timings

    run(new_tokens)  # compile prefill and decode
    runs = [run(new_tokens) for _ in range(repeats)]
    prefill = statistics.median(t["prefill_s"] for _, t in runs)
    decode = statistics.median(t["decode_s"] for _, t in runs)
    return runs[0][0], prefill, decode


def _hf(folder, prompts, new_tokens, repeats, pad_id):
    import numpy as np
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, np.int64)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = p, 1
    ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)

    def gen(n):
        with torch.inference_mode():
            return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, pad_token_id=pad_id, eos_token_id=None)

    out = gen(new_tokens)[:, width:].tolist()  # warm-up, and the tokens to compare
    gen(1)
    firsts, decodes = [], []
    for _ in range(repeats):  # interleaved, so one slow moment spoils one pair, not a whole column
        t0 = time.perf_counter()
        gen(1)
        t1 = time.perf_counter()
        gen(new_tokens)
        t2 = time.perf_counter()
        firsts.append(t1 - t0)
        decodes.append(max((t2 - t1) - (t1 - t0), 1e-9))
    return out, statistics.median(firsts), statistics.median(decodes)


def run_generate(args) -> int:
    import jax

    import readme_jax

    lm = readme_jax.load(args.model)
    rows = []
    folder = None
    if not args.no_hf:
        folder = tempfile.mkdtemp(prefix="readme-jax-bench-")
        lm.save_pretrained(folder)
    for batch in args.batch:
        prompts = [lm.encode_prompt(PROMPTS[i % len(PROMPTS)], chat=True) for i in range(batch)]
        n_prompt = sum(len(p) for p in prompts)
        ids, pre_s, dec_s = _ours(lm, prompts, args.new_tokens, args.repeats)
        row = {"batch": batch, "prompt_tokens": n_prompt, "new_tokens": args.new_tokens,
               "ours_prefill_tok_s": n_prompt / pre_s,
               "ours_decode_tok_s": batch * (args.new_tokens - 1) / dec_s}
        if folder:
            hf_ids, hf_pre, hf_dec = _hf(folder, prompts, args.new_tokens, args.repeats, lm.tokenizer.pad_id)
            row.update(hf_prefill_tok_s=n_prompt / hf_pre, hf_decode_tok_s=batch * (args.new_tokens - 1) / hf_dec)
            row["prefill_ratio"] = row["ours_prefill_tok_s"] / row["hf_prefill_tok_s"]
            row["decode_ratio"] = row["ours_decode_tok_s"] / row["hf_decode_tok_s"]
            row["greedy_identical"] = sum(a == b for a, b in zip(ids, hf_ids))
        rows.append(row)
    info = {"machine": f"{platform.machine()} {_cpu_name()} ({_cores()} cores)", "python": platform.python_version(),
            "jax": jax.__version__, "backend": jax.default_backend(), "model": lm.source}
    try:
        import torch
        import transformers

        info.update(torch=torch.__version__, transformers=transformers.__version__, torch_threads=torch.get_num_threads())
    except ImportError:
        pass
    if args.json:
        print(json.dumps({"info": info, "rows": rows}, indent=2))
        return 0
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    cols = ["batch", "prompt_tokens", "new_tokens", "ours_prefill_tok_s", "ours_decode_tok_s"]
    if folder:
        cols += ["hf_prefill_tok_s", "hf_decode_tok_s", "prefill_ratio", "decode_ratio", "greedy_identical"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in cols) + " |")
    return 0


def _cores():
    import os

    return len(os.sched_getaffinity(0))


def _cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
