"""``readme-jax bench generate``: prefill and decode tokens/s, side by side in one run.

Every engine gets the same prompts (chat-formatted), greedy decoding and exactly the same number of new tokens
(EOS ignored):

* ``dense``: our jitted generation on a dense model (``--model`` itself, or for a Read-ME folder the dense model
  it came from: ``--dense``, default the folder's recorded source, else the dense weights the folder stores);
* ``moe`` (Read-ME folders only): the sliced MoE, pre-gated by the folder's trained router, in the same programs;
* ``hf``: transformers' ``generate`` on the dense weights (exported to an HF folder), torch fp32 on the CPU.

Each cell is the median of ``--repeats`` timed runs after one warm-up run; dense and MoE runs alternate, so a
slow moment of a shared machine spoils one pair, not a column. transformers' decode time is (time for N new
tokens) - (time for 1 new token), measured in interleaved pairs. Greedy agreement: identical sequences (dense vs
transformers) and the share of identical tokens, position by position (MoE vs dense). For the MoE, the mean
number of distinct experts a decode step touches: a step reads the weights of each expert its tokens use, so
this, not the batch size, sets its cost (expert-aware batching in ``serve`` drives it towards 1).
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
    g = bsub.add_parser("generate", help="prefill/decode tokens/s: ours (dense, and MoE for a Read-ME folder) vs "
                                         "transformers on the same prompts")
    g.add_argument("--model", default="default", help="'default', a .gguf, an HF folder or a Read-ME MoE folder")
    g.add_argument("--dense", default=None, help="with a MoE folder: the dense model to compare with (default: the "
                                                 "folder's recorded source, else its own dense weights)")
    g.add_argument("--experts", choices=("split", "fused"), default="split",
                   help="MoE slot layout: permanent neurons apart (split, the default) or fused into every expert")
    g.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    g.add_argument("--new-tokens", type=int, default=64)
    g.add_argument("--repeats", type=int, default=3)
    g.add_argument("--no-hf", action="store_true", help="skip transformers (no torch needed)")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    g.set_defaults(func=run_generate)


def _timed(lm, prompts, new_tokens):
    """(ids, prefill s, decode s) of one greedy run of exactly ``new_tokens`` (EOS ignored)."""
    from readme_jax.generate import SamplingParams, generate_ids

    router = (lm.router_graphdef, lm.router_state) if getattr(lm, "router", None) is not None else None
    timings = {}
    ids = generate_ids(lm.graphdef, lm.state, lm.cfg, prompts, SamplingParams(max_new_tokens=new_tokens),
                       eos_ids=(), pad_id=lm.tokenizer.pad_id, timings=timings, router=router)
    return ids, timings["prefill_s"], timings["decode_s"]


def _ours(lms: dict, prompts, new_tokens, repeats):
    """{name: (ids, median prefill s, median decode s)}, the engines' runs interleaved."""
    for lm in lms.values():  # compile prefill and decode
        _timed(lm, prompts, new_tokens)
    runs = {name: [] for name in lms}
    for _ in range(repeats):
        for name, lm in lms.items():
            runs[name].append(_timed(lm, prompts, new_tokens))
    return {name: (r[0][0], statistics.median(x[1] for x in r), statistics.median(x[2] for x in r))
            for name, r in runs.items()}


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


def load_engines(spec: str, dense_spec: str | None, split_shared: bool = True):
    """{"dense": LM} or {"dense": LM, "moe": MoELM} and a note on where the dense model came from."""
    import readme_jax
    from readme_jax.errors import ReadmeJaxError
    from readme_jax.lm import LM, MoELM
    from readme_jax.moe_io import read_moe_folder
    from readme_jax.weights import build_model

    lm = readme_jax.load(spec, split_shared=split_shared)
    if not isinstance(lm, MoELM):
        return {"dense": lm}, "the model itself"
    if lm.router is None:
        raise ReadmeJaxError(f"{spec}: a MoE folder needs its trained router to generate (run `readme-jax train`)")
    parts = read_moe_folder(spec)
    source = dense_spec or parts.get("source")
    if source:
        dense = readme_jax.load(source)
        shape = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff")
        if isinstance(dense, MoELM) or any(getattr(dense.cfg, f) != getattr(lm.cfg, f) for f in shape):
            raise ReadmeJaxError(f"dense model {source}: not a dense model of the MoE's shape "
                                 f"({', '.join(f'{f}={getattr(lm.cfg, f)}' for f in shape)})")
        return {"dense": dense, "moe": lm}, f"{source} (the folder's {'source' if not dense_spec else '--dense'})"
    dense = LM(build_model(parts["cfg"], parts["dense_pure"]), parts["tokenizer"], source=str(spec))
    return {"dense": dense, "moe": lm}, "the dense weights stored in the folder (no source recorded)"


def _distinct_per_step(moe, prompts, generated) -> float:
    """Mean number of distinct experts among the batch's tokens at each decode step (router's choices)."""
    import numpy as np

    experts = [moe.route(np.asarray([p + g[:-1]]))[0, len(p):] for p, g in zip(prompts, generated)]
    steps = min(len(e) for e in experts)
    return float(np.mean([len({int(e[t]) for e in experts}) for t in range(steps)])) if steps else 0.0


def _agreement(a, b) -> float:
    """Share of identical tokens, position by position, over all sequences."""
    same = sum(x == y for s, t in zip(a, b) for x, y in zip(s, t))
    return same / max(sum(len(s) for s in a), 1)


def run_generate(args) -> int:
    import jax

    engines, dense_note = load_engines(args.model, args.dense, args.experts == "split")
    dense = engines["dense"]
    rows = []
    folder = None
    if not args.no_hf:
        folder = tempfile.mkdtemp(prefix="readme-jax-bench-")
        dense.save_pretrained(folder)
    for batch in args.batch:
        prompts = [dense.encode_prompt(PROMPTS[i % len(PROMPTS)], chat=True) for i in range(batch)]
        n_prompt = sum(len(p) for p in prompts)
        ours = _ours(engines, prompts, args.new_tokens, args.repeats)
        row = {"batch": batch, "prompt_tokens": n_prompt, "new_tokens": args.new_tokens}
        for name, (_, pre_s, dec_s) in ours.items():
            row[f"{name}_prefill_tok_s"] = n_prompt / pre_s
            row[f"{name}_decode_tok_s"] = batch * (args.new_tokens - 1) / dec_s
        if "moe" in ours:
            row["moe_vs_dense_prefill"] = row["moe_prefill_tok_s"] / row["dense_prefill_tok_s"]
            row["moe_vs_dense_decode"] = row["moe_decode_tok_s"] / row["dense_decode_tok_s"]
            row["moe_dense_token_agreement"] = _agreement(ours["moe"][0], ours["dense"][0])
            row["moe_distinct_experts_per_step"] = _distinct_per_step(engines["moe"], prompts, ours["moe"][0])
        if folder:
            hf_ids, hf_pre, hf_dec = _hf(folder, prompts, args.new_tokens, args.repeats, dense.tokenizer.pad_id)
            row.update(hf_prefill_tok_s=n_prompt / hf_pre, hf_decode_tok_s=batch * (args.new_tokens - 1) / hf_dec)
            row["dense_vs_hf_prefill"] = row["dense_prefill_tok_s"] / row["hf_prefill_tok_s"]
            row["dense_vs_hf_decode"] = row["dense_decode_tok_s"] / row["hf_decode_tok_s"]
            row["dense_hf_greedy_identical"] = sum(a == b for a, b in zip(ours["dense"][0], hf_ids))
        rows.append(row)
    info = {"machine": f"{platform.machine()} {_cpu_name()} ({_cores()} cores)", "python": platform.python_version(),
            "jax": jax.__version__, "backend": jax.default_backend(), "model": args.model, "dense": dense_note,
            "moe_experts": args.experts}
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
    print(format_table(rows))
    return 0


def format_table(rows) -> str:
    """One markdown table; the columns present in the rows, in a fixed order."""
    order = ["batch", "prompt_tokens", "new_tokens", "dense_prefill_tok_s", "dense_decode_tok_s",
             "moe_prefill_tok_s", "moe_decode_tok_s", "moe_vs_dense_prefill", "moe_vs_dense_decode",
             "moe_dense_token_agreement", "moe_distinct_experts_per_step", "hf_prefill_tok_s", "hf_decode_tok_s", "dense_vs_hf_prefill",
             "dense_vs_hf_decode", "dense_hf_greedy_identical"]
    cols = [c for c in order if c in rows[0]]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in cols)
                     + " |")
    return "\n".join(lines)


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
