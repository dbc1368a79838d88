"""``readme-jax trace``: held-out domain text -> a JSONL routing trace (``serve.routing.tracegen``)."""

import json
import sys
import time
from pathlib import Path

from serve.routing.tracegen import DEFAULT_RATE, DEFAULT_WORKDIR, ROUTINGS, make_trace
from serve.sim.trace import write_trace


def register(sub):
    p = sub.add_parser("trace", help="held-out domain text -> JSONL routing trace for bench-cache/bench-sched",
                       description="Route held-out text of every domain with the MoE folder's router (or the "
                                   "oracle, or the domain labels) and write a replayable request trace.")
    p.add_argument("--workdir", default=DEFAULT_WORKDIR, help="pipeline work folder (default out/readme)")
    p.add_argument("--moe", default=None, help="Read-ME MoE folder (default <workdir>/moe)")
    p.add_argument("--routing", default=None,
                   help=f"one of {', '.join(ROUTINGS)} (default: router when the folder has one, else oracle)")
    p.add_argument("--requests", type=int, default=1000, help="requests in the trace (default 1000)")
    p.add_argument("--rate", type=float, default=DEFAULT_RATE,
                   help=f"Poisson arrivals per second (default {DEFAULT_RATE:g})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="trace path (default <workdir>/trace.jsonl)")
    p.add_argument("--seqs-per-domain", type=int, default=32,
                   help="held-out text sequences routed per domain (default 32); requests reuse them when needed")
    p.add_argument("--doc-chars", type=int, default=4096,
                   help="characters per sequence: longer documents are cut into pieces of whole lines "
                        "(0: one sequence per document)")
    p.add_argument("--batch-size", type=int, default=4, help="sequences per routing pass")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_trace)


def run_trace(args) -> int:
    workdir = Path(args.workdir)
    folder = Path(args.moe) if args.moe else workdir / "moe"
    out = Path(args.out) if args.out else workdir / "trace.jsonl"
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print  # stdout stays one JSON object
    trace, summary = make_trace(folder, args.routing, args.requests, args.rate, args.seed, args.seqs_per_domain,
                                args.doc_chars, args.batch_size, progress=not args.json, log=log)
    t0 = time.perf_counter()
    summary["path"] = str(write_trace(out, trace))
    summary["write_s"] = time.perf_counter() - t0
    if args.json:
        print(json.dumps(summary))
        return 0
    names = trace.header.meta["domains"]
    s = summary
    print(f"trace: {s['requests']} requests, {s['routing']} routing, {trace.header.num_experts} experts, "
          f"{trace.header.num_layers} layers, arrivals over {s['duration_s']:.1f} s at {args.rate:g}/s")
    print(f"tokens: {s['prompt_tokens']:,} prompt + {s['output_tokens']:,} output = {s['tokens']:,} "
          f"(mean prompt {s['mean_prompt_len']:.1f}, mean output {s['mean_output_len']:.1f}); clipped by the text: "
          f"{s['clipped_prompts']} prompts, {s['clipped_outputs']} outputs")
    print(f"text: {s['sequences']} held-out sequences ({s['routed_tokens']:,} tokens routed in {s['route_s']:.1f} s); "
          f"{s['requests_reusing_text']} requests reuse a sequence (at most {s['max_uses_of_one_sequence']} uses)")
    print("expert histogram (share of tokens):")
    for e, (count, share) in enumerate(zip(s["expert_histogram"], s["expert_share"])):
        print(f"  {e} {names[e]:<13} {100 * share:6.2f}%  {count:>10,}  " + "#" * round(40 * share))
    print(f"temporal locality: {100 * s['temporal_locality']:.1f}% of tokens keep the previous token's expert")
    print(f"tokens on their domain's expert: {100 * s['domain_expert_agreement']:.1f}%")
    print(f"wrote {s['path']}")
    return 0
