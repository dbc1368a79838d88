"""Host-side arrays for the engine's programs: a batch's rows, bucketed so that shapes repeat.

Shapes: B rows -> the next power of two (padding rows write nowhere: their cache row is R, out of range);
L new tokens per row -> 1 for decodes, ``readme_jax.generate.bucket`` for prefill chunks; the attention window
W -> the bucket covering the batch's longest row plus the router's one-ahead slot, at most the context S.
"""

import dataclasses

import numpy as np

from readme_jax.generate import batch_bucket, bucket
from serve.core.types import RequestState, ServeError


@dataclasses.dataclass(frozen=True)
class Group:
    """The requests of a batch that run in one program call (all prefill chunks, or all decodes)."""

    requests: tuple
    prefill: bool


def groups(batch) -> list[Group]:
    """One call per prefill chunk, then one for all the decodes. Prefills are not batched: their shapes (rows x
    tokens x window) would multiply the compiled programs, and on the demo model the XLA CPU executables of a
    few hundred shapes exhausted the process's memory mappings; one row each keeps it to tokens x window."""
    prefill = [Group((r,), True) for r in batch.requests if r.state is RequestState.PREFILL]
    decode = tuple(r for r in batch.requests if r.state is not RequestState.PREFILL)
    return prefill + ([Group(decode, False)] if decode else [])


MIN_WINDOW = 64  # attention windows start here: fewer shapes, and a 64-slot window costs a decode step little


def _window(last_position: int, context: int) -> int:
    # + 1 for the router's slot, + 1 to count from 0
    return min(max(bucket(last_position + 2), MIN_WINDOW), context)


def step_inputs(group: Group, seqs, context: int, rows: int):
    """(arrays for ``Programs.step``, window, sampled)."""
    n = len(seqs)
    B = batch_bucket(n)
    spans = []
    for request, seq in zip(group.requests, seqs):
        if group.prefill:
            start, end = request.chunks[request.chunk]
            prompt = seq.prompt
            spans.append((start, prompt[start:end], request.spec.prompt_experts[start:end],
                          request.last_chunk))
        else:
            spans.append((len(seq.prompt) + request.generated - 1, [seq.out[-1]], [request.next_expert], True))
    L = bucket(max(len(t) for _, t, _, _ in spans)) if group.prefill else 1
    window = _window(max(start + len(t) - 1 for start, t, _, _ in spans), context)
    tokens = np.zeros((B, L), np.int32)
    pos = np.zeros((B, L), np.int32)
    write = np.full((B, L), context, np.int32)
    experts = np.full((B, L), spans[0][2][0], np.int32)
    row_ids = np.full(B, rows, np.int32)
    last = np.zeros(B, np.int32)
    emit = np.zeros(B, bool)
    temperature = np.zeros(B, np.float32)
    top_k = np.zeros(B, np.int32)
    top_p = np.ones(B, np.float32)
    seed = np.zeros(B, np.int32)
    count = np.zeros(B, np.int32)
    for b, ((start, toks, exps, emits), seq, request) in enumerate(zip(spans, seqs, group.requests)):
        k = len(toks)
        tokens[b, :k] = toks
        pos[b] = np.minimum(start + np.arange(L), context - 1)
        write[b, :k] = start + np.arange(k)
        experts[b, :] = exps[0]
        experts[b, :k] = exps
        row_ids[b] = seq.row
        last[b] = k - 1
        emit[b] = emits
        params = seq.params
        temperature[b] = params.temperature
        top_k[b] = params.top_k or 0
        top_p[b] = params.top_p or 1.0
        seed[b] = params.seed
        count[b] = request.generated
    greedy = temperature == 0.0
    sampled = bool((~greedy[:n]).any())
    sampling = (temperature, top_k, top_p, greedy, seed, count)
    return (tokens, pos, write, experts, row_ids, last, emit, sampling), window, sampled


def route_inputs(seqs, context: int, rows: int):
    """(tokens, positions, writes, rows, window) for ``Programs.route`` over the prompts of ``seqs``."""
    B = batch_bucket(len(seqs))
    longest = max(len(s.prompt) for s in seqs)
    L = bucket(longest)
    tokens = np.zeros((B, L), np.int32)
    pos = np.tile(np.minimum(np.arange(L), context - 1), (B, 1)).astype(np.int32)
    write = np.full((B, L), context, np.int32)
    row_ids = np.full(B, rows, np.int32)
    for b, seq in enumerate(seqs):
        k = len(seq.prompt)
        tokens[b, :k] = seq.prompt
        write[b, :k] = np.arange(k)
        row_ids[b] = seq.row
    return tokens, pos, write, row_ids, min(max(bucket(longest), MIN_WINDOW), context)


def check_forced(spec, prompt, num_experts: int) -> None:
    """A teacher-forced spec must carry the prompt and every generated token with its expert."""
    if spec.prompt_ids is None or list(spec.prompt_ids) != list(prompt):
        raise ServeError(f"request {spec.request_id!r}: teacher forcing needs the spec's prompt_ids as the prompt")
    if spec.output_ids is None:
        raise ServeError(f"request {spec.request_id!r}: teacher forcing needs the spec's output_ids")
    if spec.min_expert() < 0 or spec.max_expert() >= num_experts:
        raise ServeError(f"request {spec.request_id!r}: expert ids outside [0, {num_experts})")


def finished_spec(request, seq):
    """A live request's spec with what it really generated (tokens and the router's experts)."""
    return dataclasses.replace(request.spec, output_experts=tuple(request.experts_out), output_ids=tuple(seq.out))
