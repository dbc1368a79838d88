"""Log-likelihood of each request's continuation given its context, batched and length-bucketed.

Encoding follows the EleutherAI harness: trailing spaces of the context move to the continuation, the
continuation's ids are those of ``encode(context + continuation)`` past ``encode(context)`` and the model reads
the context's own ids before them, BOS is prepended when the tokenizer adds one, and an input
longer than ``max_len`` loses tokens from the left.

One forward serves every request whose *input* (context + continuation minus its last token) is the same: a
row returns the log-probability of each of its own next tokens and the whole distribution at its last
position. MMLU's four one-token answers thus cost one forward, not four. Rows are sorted by length and padded
on the right to a bucket length with a fixed number of rows per bucket (``bucket_shapes``), so each model
compiles once per bucket; right padding never changes the real positions of a causal model.
"""

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from readme_jax.errors import ReadmeJaxError

BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096)
TOKENS_PER_BATCH = 2048  # rows per bucket = this // bucket length (at least 1)


@dataclasses.dataclass(frozen=True)
class Encoded:
    """A request as ids: the model reads ``input_ids`` and must predict ``target_ids`` at its last positions."""

    input_ids: tuple[int, ...]
    target_ids: tuple[int, ...]


def encode_request(tokenizer, context: str, continuation: str, max_len: int) -> Encoded:
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    ctx = tokenizer.encode(context)
    target = tokenizer.encode(context + continuation)[len(ctx):]
    if not target:
        raise ReadmeJaxError(f"continuation {continuation!r} encodes to no tokens")
    prefix = [tokenizer.bos_id] if tokenizer.add_bos else []
    if not prefix and not ctx:
        prefix = [tokenizer.eos_id if tokenizer.eos_id is not None else 0]  # something to predict the first from
    full = prefix + ctx + target
    if len(target) >= max_len:
        raise ReadmeJaxError(f"a continuation of {len(target)} tokens does not fit --max-len {max_len}")
    inputs = full[:-1][-max_len:]  # left truncation keeps the continuation
    return Encoded(tuple(inputs), tuple(target))


def bucket_shapes(length: int) -> tuple[int, int]:
    """(rows, padded length) of the bucket holding an input of ``length`` tokens."""
    L = next((b for b in BUCKETS if b >= length), None)
    if L is None:
        raise ReadmeJaxError(f"an input of {length} tokens exceeds the largest bucket {BUCKETS[-1]}")
    return max(1, TOKENS_PER_BATCH // L), L


@partial(jax.jit, static_argnums=0)
def _row_scores(graphdef, state, tokens_BL, last_B, route_BL):
    """(log p of each next own token [B, L-1], whether it is the argmax [B, L-1], log p at the last real
    position [B, V]). Logits in fp32."""
    logits_BLV = nnx.merge(graphdef, state)(tokens_BL, route=route_BL).astype(jnp.float32)
    lse_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
    own_BL = jnp.take_along_axis(logits_BLV[:, :-1], tokens_BL[:, 1:, None], axis=-1)[..., 0] - lse_BL[:, :-1]
    greedy_BL = jnp.argmax(logits_BLV[:, :-1], axis=-1) == tokens_BL[:, 1:]
    rows_B = jnp.arange(tokens_BL.shape[0])
    last_BV = logits_BLV[rows_B, last_B] - lse_BL[rows_B, last_B][:, None]
    return own_BL, greedy_BL, last_BV


@dataclasses.dataclass(frozen=True)
class Kind:
    """One model to score with: ``route(tokens_BL) -> expert ids [B, L]`` (or None for a dense model)."""

    name: str
    graphdef: object
    state: object
    route: object = None


def score(kind: Kind, requests: list[Encoded], pad_id: int = 0, progress: bool = True, desc: str = "") -> dict:
    """Per request: ``logprob`` (sum over the continuation), ``greedy`` (every continuation token is the argmax)
    and ``n_tokens``; plus ``rows`` (distinct inputs run) and ``padded_tokens``."""
    rows = {}  # input ids -> row index (requests sharing an input share a forward)
    for req in requests:
        rows.setdefault(req.input_ids, len(rows))
    inputs = list(rows)
    order = sorted(range(len(inputs)), key=lambda r: len(inputs[r]))
    own, greedy, last = [None] * len(inputs), [None] * len(inputs), [None] * len(inputs)
    bar = tqdm(total=len(inputs), desc=desc or kind.name, unit="row", disable=not progress, leave=False)
    padded = 0
    start = 0
    while start < len(order):
        B, L = bucket_shapes(len(inputs[order[start]]))
        chunk = [r for r in order[start:start + B] if len(inputs[r]) <= L]
        tokens_BL = np.full((B, L), pad_id, np.int32)
        last_B = np.zeros(B, np.int32)
        for b, r in enumerate(chunk):
            tokens_BL[b, :len(inputs[r])] = inputs[r]
            last_B[b] = len(inputs[r]) - 1
        route_BL = None if kind.route is None else jnp.asarray(kind.route(tokens_BL), jnp.int32)
        out = _row_scores(kind.graphdef, kind.state, jnp.asarray(tokens_BL), jnp.asarray(last_B), route_BL)
        own_BL, greedy_BL, last_BV = (np.asarray(a) for a in out)
        for b, r in enumerate(chunk):
            n = len(inputs[r])
            own[r], greedy[r], last[r] = own_BL[b, :n - 1], greedy_BL[b, :n - 1], last_BV[b]
        padded += B * L
        start += len(chunk)
        bar.update(len(chunk))
    bar.close()
    logprob, is_greedy, n_tokens = [], [], []
    for req in requests:
        r = rows[req.input_ids]
        m = len(req.target_ids)
        inner = slice(len(req.input_ids) - m, len(req.input_ids) - 1)  # positions predicting all but the last
        lp = float(np.sum(own[r][inner], dtype=np.float64)) + float(last[r][req.target_ids[-1]])
        g = bool(np.all(greedy[r][inner])) and int(np.argmax(last[r])) == req.target_ids[-1]
        logprob.append(lp)
        is_greedy.append(g)
        n_tokens.append(m)
    return {"logprob": logprob, "greedy": is_greedy, "n_tokens": n_tokens, "rows": len(inputs),
            "padded_tokens": padded}
