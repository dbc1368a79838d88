"""Routing traces: held-out domain text -> a JSONL request trace for the serving simulator.

The library side of ``readme-jax trace`` (``serve.routing.cli``):

1. Text: the held-out documents of every domain of the MoE folder (expert order), ordered as
   ``corpus_blocks.domain_blocks`` orders them and cut into pieces of whole lines of at most ``doc_chars``
   characters (``heldout_sequences``). A piece is tokenized and keeps at most ``prompt_max + output_max``
   tokens, the longest request the lengths below can ask for.
2. Routing, one expert per token of every sequence, from one pass over the whole sequence:
   - ``router``: the folder's trained pre-gating router (``MoELM.route``). It is causal, so the experts of the
     first t tokens do not depend on what follows: prompt and output experts come out of the same pass.
   - ``oracle``: the dense teacher's oracle expert (``oracle.teacher_step`` + ``oracle_choices``, summed over
     layers), what the router is distilled towards. Also causal.
   - ``domain``: every token gets its domain's expert.
   Sequences are right-padded to one [batch, length] shape (one compile); by causality the padding never
   changes a real token's expert.
3. Requests, from one seeded ``random.Random`` (a seed fixes the whole trace): Poisson arrivals at ``rate``;
   prompt and output lengths drawn exactly as ``serve.sim.workload`` draws them (Chatbot-Arena-like log-normals);
   a domain drawn uniformly, then that domain's next sequence in a seeded shuffled cycle (so text is reused
   only once every sequence of the domain has been used). The prompt is the sequence's first p tokens and
   the output the next o; when the text is shorter than p + o, the prompt keeps at least one output token
   and the output is cut. ``max_new_tokens`` is ``output_max`` for every request, as in the synthetic workload.
4. The trace goes through ``serve.sim.trace``'s validation and is written atomically (temp file + rename). The
   header's ``meta`` says how much text was reused and clipped; each request's ``meta`` names its domain and
   document.
"""

import json
import math
import time
from pathlib import Path

import numpy as np

from readme_jax.data.heldout_text import SPLIT_SALT, TextSequence, heldout_sequences, text_pieces  # noqa: F401
from readme_jax.errors import ReadmeJaxError

ROUTINGS = ("router", "oracle", "domain")
DEFAULT_WORKDIR = "out/readme"
DEFAULT_RATE = 6.0  # requests/s: bench-cache's default synthetic rate, the lowest of bench-sched's


def _positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ReadmeJaxError(f"{name}={value!r} must be a positive integer")


def check_options(routing, num_requests, rate, seqs_per_domain, doc_chars, batch_size) -> None:
    """Bad option values, before anything is loaded."""
    if routing is not None and routing not in ROUTINGS:
        raise ReadmeJaxError(f"unknown routing {routing!r}; choose one of {', '.join(ROUTINGS)}")
    _positive_int(num_requests, "--requests")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
        raise ReadmeJaxError(f"--rate={rate!r} must be a finite number > 0 (requests per second)")
    _positive_int(seqs_per_domain, "--seqs-per-domain")
    if isinstance(doc_chars, bool) or not isinstance(doc_chars, int) or doc_chars < 0:
        raise ReadmeJaxError(f"--doc-chars={doc_chars!r} must be an integer >= 0 (0: whole documents)")
    _positive_int(batch_size, "--batch-size")


def folder_has_router(folder: Path) -> bool:
    """Whether the folder's config names a trained router (read without loading any weights)."""
    from readme_jax.moe_io import MOE_KEY

    try:
        fields = json.loads((folder / "config.json").read_text())[MOE_KEY]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ReadmeJaxError(f"{folder}/config.json: cannot read the '{MOE_KEY}' fields ({exc})") from None
    return isinstance(fields, dict) and "router" in fields


def route_sequences(sequences: list[TextSequence], experts_fn, seq_len: int, batch_size: int, pad_id: int,
                    desc: str, progress: bool = True) -> None:
    """Step 2: ``experts_fn(ids [B, seq_len]) -> experts [B, seq_len]`` over right-padded batches, in place."""
    from tqdm import tqdm

    bar = tqdm(total=len(sequences), desc=desc, unit="seq", disable=not progress)
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        # Fixed [batch_size, seq_len]: one compile. Pad rows repeat the last sequence and are dropped.
        ids_BL = np.full((batch_size, seq_len), pad_id, np.int32)
        for row in range(batch_size):
            seq = chunk[min(row, len(chunk) - 1)]
            ids_BL[row, :len(seq.ids_T)] = seq.ids_T
        experts_BL = np.asarray(experts_fn(ids_BL))
        for row, seq in enumerate(chunk):
            seq.experts_T = experts_BL[row, :len(seq.ids_T)].astype(np.int32)
        bar.update(len(chunk))
    bar.close()


def draw_requests(sequences: list[TextSequence], domain_names, num_requests: int, rate: float, seed: int):
    """Step 3: (RequestSpecs in arrival order, statistics of text reuse and clipping)."""
    import random

    from serve.core.types import RequestSpec
    from serve.sim.workload import (  # the synthetic workload's length law
        WorkloadConfig,
        lognormal_length,
    )

    lengths = WorkloadConfig()
    rng = random.Random(seed)
    by_domain = [[s for s in sequences if s.domain == d] for d in range(len(domain_names))]
    for pool in by_domain:
        rng.shuffle(pool)
    next_index = [0] * len(by_domain)
    uses = {}
    specs = []
    reused = clipped_prompts = clipped_outputs = 0
    now = 0.0
    for index in range(num_requests):
        now += rng.expovariate(rate)
        prompt_len = lognormal_length(rng, lengths.prompt_mean, lengths.prompt_sigma, lengths.prompt_max)
        output_len = lognormal_length(rng, lengths.output_mean, lengths.output_sigma, lengths.output_max)
        d = rng.randrange(len(by_domain))
        pool = by_domain[d]
        seq = pool[next_index[d] % len(pool)]
        next_index[d] += 1
        uses[id(seq)] = uses.get(id(seq), 0) + 1
        reused += uses[id(seq)] > 1
        T = len(seq.ids_T)
        if prompt_len > T - 1:  # keep one token of text for the output
            prompt_len, clipped_prompts = T - 1, clipped_prompts + 1
        if output_len > T - prompt_len:
            output_len, clipped_outputs = T - prompt_len, clipped_outputs + 1
        stop = prompt_len + output_len
        specs.append(RequestSpec(
            request_id=f"{domain_names[d]}-{index}",
            arrival_s=now,
            prompt_experts=tuple(seq.experts_T[:prompt_len].tolist()),
            output_experts=tuple(seq.experts_T[prompt_len:stop].tolist()),
            max_new_tokens=lengths.output_max,
            prompt_ids=tuple(seq.ids_T[:prompt_len].tolist()),
            output_ids=tuple(seq.ids_T[prompt_len:stop].tolist()),
            meta={"domain": domain_names[d], "doc": seq.doc_id, "use": uses[id(seq)]},
        ))
    stats = {
        "sequences": len(sequences),
        "sequences_used": len(uses),
        "requests_reusing_text": reused,
        "max_uses_of_one_sequence": max(uses.values()),
        "clipped_prompts": clipped_prompts,
        "clipped_outputs": clipped_outputs,
        "lengths": {k: getattr(lengths, k) for k in ("prompt_mean", "prompt_sigma", "prompt_max", "output_mean",
                                                     "output_sigma", "output_max")},
    }
    return specs, stats


def _router_experts(folder: Path):
    """(experts_fn, tokenizer, cfg, sequence length limit) from the folder's trained router."""
    import readme_jax

    lm = readme_jax.load(str(folder))
    return lm.route, lm.tokenizer, lm.cfg, lm.router.cfg.max_seq_len


def _oracle_experts(parts: dict):
    """experts_fn: the dense teacher's oracle expert (summed over layers) for every token."""
    import jax.numpy as jnp
    from flax import nnx

    from readme_jax import oracle
    from readme_jax.weights import build_model

    graphdef, state = nnx.split(build_model(parts["cfg"], parts["dense_pure"]))
    masks_NEF = jnp.asarray(parts["masks_NEF"])
    k = int(parts["masks_NEF"][0, 0].sum())  # the expert width, as in evaluate()

    def experts_fn(ids_BL):
        _, overlap_NBLE = oracle.teacher_step(graphdef, state, jnp.asarray(ids_BL), masks_NEF, k)
        return np.asarray(oracle.oracle_choices(overlap_NBLE)[1])

    return experts_fn


def make_trace(folder, routing: str | None = None, num_requests: int = 1000, rate: float = DEFAULT_RATE,
               seed: int = 0, seqs_per_domain: int = 32, doc_chars: int = 4096, batch_size: int = 4,
               domains=None, progress: bool = True, log=print):
    """Steps 1-3: (serve.sim.trace.Trace, summary dict). ``domains``: a DomainSet in the folder's expert order
    (default: the registry's domains of those names)."""

    from readme_jax.moe_io import is_moe_folder, read_moe_folder
    from serve.sim.trace import Trace, TraceHeader
    from serve.sim.workload import WorkloadConfig

    check_options(routing, num_requests, rate, seqs_per_domain, doc_chars, batch_size)
    folder = Path(folder)
    if not is_moe_folder(folder):
        raise ReadmeJaxError(f"{folder}: no Read-ME MoE folder; run `readme-jax refactor` first (or pass --moe)")
    has_router = folder_has_router(folder)
    requested = routing
    if routing is None:
        routing = "router" if has_router else "oracle"
        if not has_router:
            log(f"note: {folder} has no trained router yet; using oracle routing (the dense teacher's expert "
                "per token, which the router is trained to predict)")
    elif routing == "router" and not has_router:
        raise ReadmeJaxError(f"--routing router: {folder} has no trained router (run `readme-jax train`, or use "
                             "--routing oracle or domain)")

    t0 = time.perf_counter()
    lengths = WorkloadConfig()
    max_tokens = lengths.prompt_max + lengths.output_max
    if routing == "router":
        experts_fn, tokenizer, cfg, router_len = _router_experts(folder)
        names, E, N = tuple(cfg.domains), cfg.n_experts, cfg.n_layers
        max_tokens = min(max_tokens, cfg.max_seq_len, router_len)
    else:
        parts = read_moe_folder(folder)
        tokenizer, names, E, N = parts["tokenizer"], tuple(parts["domains"]), parts["masks_NEF"].shape[1], \
            parts["cfg"].n_layers
        max_tokens = min(max_tokens, parts["cfg"].max_seq_len)
        experts_fn = _oracle_experts(parts) if routing == "oracle" else None
    if len(names) != E:
        raise ReadmeJaxError(f"{folder}: {len(names)} domain names for {E} experts; the trace needs one domain "
                             "per expert")
    if domains is None:
        from readme_jax.corpus_blocks import select_domains

        domains = select_domains(names)
    elif tuple(domains.names) != names:
        raise ReadmeJaxError(f"domains {list(domains.names)} do not match the folder's experts {list(names)}")
    load_s = time.perf_counter() - t0

    sequences = heldout_sequences(tokenizer, domains, seqs_per_domain, doc_chars, max_tokens, progress)
    t1 = time.perf_counter()
    if routing == "domain":
        for seq in sequences:
            seq.experts_T = np.full(len(seq.ids_T), seq.domain, np.int32)
    else:
        seq_len = max(len(s.ids_T) for s in sequences)
        pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        route_sequences(sequences, experts_fn, seq_len, batch_size, pad_id, f"routing ({routing})", progress)
    route_s = time.perf_counter() - t1
    for seq in sequences:
        if seq.experts_T.min() < 0 or seq.experts_T.max() >= E:
            raise ReadmeJaxError(f"{routing} routing gave expert ids outside [0, {E}) for {seq.doc_id}")

    specs, stats = draw_requests(sequences, names, num_requests, rate, seed)
    seq_tokens = sum(len(s.ids_T) for s in sequences)
    meta = {
        "moe": str(folder), "routing": routing, "routing_requested": requested, "domains": list(names),
        "requests": num_requests, "rate_per_s": rate, "seed": seed, "seqs_per_domain": seqs_per_domain,
        "doc_chars": doc_chars, "max_tokens_per_sequence": max_tokens, "routed_tokens": seq_tokens,
        "text_reused": stats["requests_reusing_text"] > 0, **stats,
    }
    trace = Trace(TraceHeader(E, N, routing, meta), tuple(specs))
    summary = summarize_trace(trace, names)
    summary.update(routing=routing, sequences=len(sequences), routed_tokens=seq_tokens, load_s=load_s,
                   route_s=route_s, routed_tokens_per_s=seq_tokens / route_s if route_s > 0 else None,
                   **{k: stats[k] for k in ("requests_reusing_text", "max_uses_of_one_sequence", "clipped_prompts",
                                            "clipped_outputs")})
    return trace, summary


def summarize_trace(trace, domain_names) -> dict:
    """Requests, tokens, the expert histogram, temporal locality and domain agreement of a trace."""
    from serve.sim.workload import repeat_rate

    E = trace.header.num_experts
    counts = [0] * E
    prompt_tokens = output_tokens = agree = 0
    for spec in trace.requests:
        prompt_tokens += spec.prompt_len
        output_tokens += spec.num_output_tokens
        domain = domain_names.index(spec.meta["domain"]) if spec.meta and "domain" in spec.meta else None
        for e in spec.prompt_experts + spec.output_experts:
            counts[e] += 1
            agree += e == domain
    tokens = prompt_tokens + output_tokens
    return {
        "requests": len(trace.requests),
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "tokens": tokens,
        "mean_prompt_len": prompt_tokens / len(trace.requests),
        "mean_output_len": output_tokens / len(trace.requests),
        "expert_histogram": counts,
        "expert_share": [c / tokens for c in counts],
        # repeat_rate counts within each request: a request starts fresh, as a server sees it.
        "temporal_locality": repeat_rate(list(trace.requests)),
        "domain_expert_agreement": agree / tokens,
        "duration_s": trace.requests[-1].arrival_s,
    }
