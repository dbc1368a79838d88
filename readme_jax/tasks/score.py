"""Log-likelihood of each request's continuation given its context, with shared prefixes computed once.

Encoding follows the EleutherAI harness: trailing spaces of the context move to the continuation, the
continuation's ids are those of ``encode(context + continuation)`` past ``encode(context)`` and the model reads
the context's own ids before them, BOS is prepended when the tokenizer adds one, and an input
longer than ``max_len`` loses tokens from the left.

Requests are packed as prefix trees. A multiple-choice document's choices share its context, so the
inputs go into a trie, and each row holds a trie of several requests. Every trie node is one token, with its
depth as its RoPE position, and it attends to its ancestors and itself. A causal model then computes at each
node exactly what it computes at that token of every request through it. Each request asks for the
log-probability of each continuation token at the node before it ("queries"): a multiple-choice document
costs about one context plus its choices. Rows of a task have one length (``row_length``) and a fixed number
per batch, so each model's backbone compiles once per row shape (tasks of one row length share it). Prefixes
of at least ``trunks.TRUNK_MIN`` tokens shared by several requests (MMLU's five shots, shared by a subject's
documents) run once into a KV cache instead (``readme_jax.tasks.trunks``).
"""

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from readme_jax.errors import ReadmeJaxError

ROW_LENGTHS = (512, 1024, 2048, 4096)  # packed row lengths; the shortest that holds a task's longest input
TOKENS_PER_BATCH = 2048  # rows per batch = this // row length (at least 1)


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


def row_length(longest: int) -> int:
    """The packed row length for a task whose longest input has ``longest`` tokens."""
    L = next((b for b in ROW_LENGTHS if b >= longest), None)
    if L is None:
        raise ReadmeJaxError(f"an input of {longest} tokens exceeds the longest row {ROW_LENGTHS[-1]}")
    return L


class _Trie:
    """One packed row: token, parent and depth per node (parents before children) and the queries asked."""

    def __init__(self):
        self.tokens, self.parent, self.depth = [], [], []
        self.child = {}  # (parent node, token) -> node
        self.queries = {}  # (node, target token) -> query index

    def missing(self, ids) -> int:
        """How many nodes ``ids`` would add."""
        node = -1
        for at, t in enumerate(ids):
            node = self.child.get((node, t))
            if node is None:
                return len(ids) - at
        return 0

    def add(self, req: Encoded) -> list[int]:
        """Insert a request's input; its query indices, one per continuation token."""
        node, nodes = -1, []
        for t in req.input_ids:
            nxt = self.child.get((node, t))
            if nxt is None:
                nxt = self.child[(node, t)] = len(self.tokens)
                self.tokens.append(t)
                self.parent.append(node)
                self.depth.append(len(nodes))
            node = nxt
            nodes.append(node)
        n, m = len(req.input_ids), len(req.target_ids)
        # continuation token j is predicted at input position n - m + j (the last input predicts the last one)
        return [self.queries.setdefault((nodes[n - m + j], t), len(self.queries))
                for j, t in enumerate(req.target_ids)]

    def mask(self, L: int) -> np.ndarray:
        """[L, L] bool: node i sees node j when j is i or one of its ancestors; padding sees only itself."""
        anc_LL = np.eye(L, dtype=bool)
        for i, p in enumerate(self.parent):
            if p >= 0:
                anc_LL[i] |= anc_LL[p]  # parents come first, so row p is already complete
        return anc_LL


def pack(requests: list[Encoded], L: int) -> tuple[list[_Trie], list[tuple[int, list[int]]]]:
    """Requests into rows of at most ``L`` nodes and ``L`` queries, in sorted order so that requests sharing a
    prefix sit together. Returns the rows and, per request, (row index, its query indices)."""
    rows, where = [_Trie()], [None] * len(requests)
    for i in sorted(range(len(requests)), key=lambda r: requests[r].input_ids):
        req = requests[i]
        if len(req.input_ids) > L:
            raise ReadmeJaxError(f"an input of {len(req.input_ids)} tokens does not fit a row of {L}")
        row = rows[-1]
        if row.tokens and (len(row.tokens) + row.missing(req.input_ids) > L
                           or len(row.queries) + len(req.target_ids) > L):
            row = _Trie()
            rows.append(row)
        where[i] = (len(rows) - 1, row.add(req))
    return rows, where


@partial(jax.jit, static_argnums=0)
def query_scores(graphdef, state, x_BLD, qpos_BQ, qtok_BQ):
    """Per query: log p of its token at its node and whether that token is the argmax there ([B, Q] each).
    The head runs only at the queried nodes; logits in fp32.

    A program of its own, apart from the backbone's: the query count Q differs from task to task, and in one
    program with the backbone each new Q compiled the whole backbone again (half a minute for a sliced MoE)."""
    model = nnx.merge(graphdef, state)
    x_BQD = x_BLD[jnp.arange(x_BLD.shape[0])[:, None], qpos_BQ]
    logits_BQV = model.head(x_BQD).astype(jnp.float32)
    own_BQ = jnp.take_along_axis(logits_BQV, qtok_BQ[..., None], axis=-1)[..., 0]
    return own_BQ - jax.nn.logsumexp(logits_BQV, axis=-1), jnp.argmax(logits_BQV, axis=-1) == qtok_BQ


@partial(jax.jit, static_argnums=0)
def _tree_hidden(graphdef, state, tokens_BL, pos_BL, mask_BLL, route_BL):
    x_BLD, _ = nnx.merge(graphdef, state).hidden(tokens_BL, pos_BL, None, route=route_BL, mask_BLS=mask_BLL)
    return x_BLD


@dataclasses.dataclass(frozen=True)
class Kind:
    """One model to score with: ``route(tokens_BL, pos_BL, mask_BLL) -> expert ids [B, L]`` over packed rows
    (positions and the tree mask as ``_tree_hidden`` uses them), or None for a dense model."""

    name: str
    graphdef: object
    state: object
    route: object = None


def score(kind: Kind, requests: list[Encoded], pad_id: int = 0, progress: bool = True, desc: str = "") -> dict:
    """Per request: ``logprob`` (sum over the continuation), ``greedy`` (every continuation token is the argmax)
    and ``n_tokens``; plus counters: ``rows`` (packed rows run), ``tokens`` (trie nodes, each computed once),
    ``trunks`` and ``trunk_tokens`` (long shared prefixes run once into a cache, ``readme_jax.tasks.trunks``),
    ``input_tokens`` (what one forward per request would read) and ``padded_tokens``."""
    from readme_jax.tasks import trunks

    plain, groups = trunks.split(requests)
    bar = tqdm(total=len(requests), desc=desc or kind.name, unit="req", disable=not progress, leave=False)
    results, counters = {}, {"rows": 0, "tokens": 0, "trunks": 0, "trunk_tokens": 0, "padded_tokens": 0}
    if plain:
        got, seen = _score_rows(kind, [requests[i] for i in plain], pad_id, bar)
        results.update(zip(plain, got))
        counters = {k: counters[k] + seen.get(k, 0) for k in counters}
    if groups:
        got, seen = trunks.score_groups(kind, requests, groups, pad_id, bar)
        results.update(got)
        counters = {k: counters[k] + seen.get(k, 0) for k in counters}
    bar.close()
    return {"logprob": [results[i][0] for i in range(len(requests))],
            "greedy": [results[i][1] for i in range(len(requests))],
            "n_tokens": [len(r.target_ids) for r in requests],
            "input_tokens": sum(len(r.input_ids) for r in requests), **counters}


def _score_rows(kind: Kind, requests: list[Encoded], pad_id: int, bar) -> tuple[list, dict]:
    """(log-likelihood, greedy) per request, packed into rows of one length; and the counters."""
    L = row_length(max(len(r.input_ids) for r in requests))
    rows, where = pack(requests, L)
    Q = 8
    while Q < max(len(r.queries) for r in rows):
        Q *= 2
    B = max(1, TOKENS_PER_BATCH // L)
    lp_R, greedy_R = [None] * len(rows), [None] * len(rows)
    per_row = np.bincount([r for r, _ in where], minlength=len(rows))
    for start in range(0, len(rows), B):
        batch = rows[start:start + B]
        tokens_BL = np.full((B, L), pad_id, np.int32)
        pos_BL = np.zeros((B, L), np.int32)
        mask_BLL = np.zeros((B, L, L), bool)
        qpos_BQ = np.zeros((B, Q), np.int32)
        qtok_BQ = np.zeros((B, Q), np.int32)
        for b, row in enumerate(batch):
            n = len(row.tokens)
            tokens_BL[b, :n], pos_BL[b, :n] = row.tokens, row.depth
            mask_BLL[b] = row.mask(L)
            for (node, t), q in row.queries.items():
                qpos_BQ[b, q], qtok_BQ[b, q] = node, t
        for b in range(len(batch), B):
            mask_BLL[b] = np.eye(L, dtype=bool)
        route_BL = None if kind.route is None else jnp.asarray(kind.route(tokens_BL, pos_BL, mask_BLL), jnp.int32)
        x_BLD = _tree_hidden(kind.graphdef, kind.state, jnp.asarray(tokens_BL), jnp.asarray(pos_BL),
                             jnp.asarray(mask_BLL), route_BL)
        out = query_scores(kind.graphdef, kind.state, x_BLD, jnp.asarray(qpos_BQ), jnp.asarray(qtok_BQ))
        lp_BQ, greedy_BQ = (np.asarray(a) for a in out)
        for b in range(len(batch)):
            lp_R[start + b], greedy_R[start + b] = lp_BQ[b], greedy_BQ[b]
        bar.update(int(per_row[start:start + B].sum()))
    got = [(float(np.sum(lp_R[r][qs], dtype=np.float64)), bool(np.all(greedy_R[r][qs]))) for r, qs in where]
    return got, {"rows": len(rows), "tokens": sum(len(r.tokens) for r in rows),
                 "padded_tokens": -(-len(rows) // B) * B * L}
