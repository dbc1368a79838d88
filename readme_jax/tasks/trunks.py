"""Long shared prefixes ("trunks") computed once into a KV cache, their requests' own parts packed after it.

Packing tries into rows (``readme_jax.tasks.score``) computes a shared prefix once per row, but every row
must hold the prefix again, and attention over a packed row costs its length squared. MMLU's five-shot
prefix (~600 tokens) is shared by all of a subject's documents. Here consecutive requests (in sorted order)
that share at least ``TRUNK_MIN`` tokens, and are not all one input, form a group. Its trunk runs once,
causally, into a cache of one row, which is broadcast to the group's suffix rows. The suffixes (each
request's input past the trunk) are packed into tries as before, at positions after the trunk; they attend
to the trunk's real slots and to their own ancestors.

Routes: a kind's ``route`` sees each suffix row with the trunk in front of it, as one causal tree
(``full_view``), so a routed model gets for every token the expert it gets when the request is routed alone.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from readme_jax.errors import ReadmeJaxError
from readme_jax.model import init_cache
from readme_jax.tasks.score import Encoded, pack, query_scores

TRUNK_MIN = 256  # a group's shared prefix must be at least this long
LENGTHS = (128, 256, 512, 1024, 2048, 4096)  # trunk and suffix-row buckets
SUFFIX_ROW = 512  # the shortest suffix row
MAX_ROWS = 4  # suffix rows per forward: bounds the broadcast cache and the batch


def _bucket(n: int, what: str) -> int:
    L = next((b for b in LENGTHS if b >= n), None)
    if L is None:
        raise ReadmeJaxError(f"a {what} of {n} tokens exceeds the longest bucket {LENGTHS[-1]}")
    return L


def _common(a, b, limit: int) -> int:
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def split(requests: list[Encoded]) -> tuple[list[int], list[tuple[int, list[int]]]]:
    """(indices of requests without a long shared prefix, groups as (trunk length, request indices)).

    A trunk never reaches a request's first scored position (input position n - m), so every queried node
    lies in a suffix."""
    order = sorted(range(len(requests)), key=lambda r: requests[r].input_ids)
    plain, groups = [], []
    head, P, members = None, 0, []

    def close():
        # Requests with one and the same input (a document's one-token answers) already share every node in a
        # packed row; a trunk pays only when different inputs share it.
        if P >= TRUNK_MIN and len({requests[m].input_ids for m in members}) > 1:
            groups.append((P, list(members)))
        else:
            plain.extend(members)

    for i in order:
        ids = requests[i].input_ids
        own = len(ids) - len(requests[i].target_ids)  # tokens before the first scored position
        if members:
            shared = _common(head, ids, min(P, own))
            if shared >= TRUNK_MIN:
                P = shared
                members.append(i)
                continue
            close()
        head, P, members = ids, own, [i]
    if members:
        close()
    return sorted(plain), groups


@partial(jax.jit, static_argnums=0)
def _trunk_hidden(graphdef, state, trunk_1P, n_trunk, trunk_route_1P, tokens_BL, pos_BL, mask_BLS, route_BL):
    """The trunk into a one-row cache, broadcast to the B suffix rows, which then attend over it
    (``mask_BLS`` over [trunk slots | own slots]); the suffix rows' hidden states [B, L, D]."""
    model = nnx.merge(graphdef, state)
    Pb = trunk_1P.shape[1]
    B, L = tokens_BL.shape
    S = Pb + L
    valid_1S = jnp.arange(S)[None] < n_trunk
    _, cache = model.hidden(trunk_1P, jnp.arange(Pb)[None], valid_1S, cache=init_cache(model.cfg, 1, S),
                            write_index=0, route=trunk_route_1P)
    cache = tuple((jnp.broadcast_to(k, (B,) + k.shape[1:]), jnp.broadcast_to(v, (B,) + v.shape[1:]))
                  for k, v in cache)
    x_BLD, _ = model.hidden(tokens_BL, pos_BL, None, cache=cache, write_index=Pb, route=route_BL, mask_BLS=mask_BLS)
    return x_BLD


def full_view(trunk_P, n_trunk: int, tokens_BL, pos_BL, mask_BLS):
    """The trunk and each suffix row as one row of a causal tree: tokens, positions [B, Pb + L] and mask
    [B, Pb + L, Pb + L] (what a route function reads)."""
    B, L = tokens_BL.shape
    Pb = len(trunk_P)
    S = Pb + L
    tokens = np.concatenate([np.broadcast_to(trunk_P, (B, Pb)), tokens_BL], axis=1)
    pos = np.concatenate([np.broadcast_to(np.arange(Pb), (B, Pb)), pos_BL], axis=1)
    mask = np.zeros((B, S, S), bool)
    mask[:, :Pb, :Pb] = np.tril(np.ones((Pb, Pb), bool)) & (np.arange(Pb)[None, :] < max(n_trunk, 1))
    mask[:, np.arange(Pb), np.arange(Pb)] = True
    mask[:, Pb:, :] = mask_BLS
    return tokens, pos, mask


def _pow2(n: int, least: int = 1) -> int:
    out = least
    while out < n:
        out *= 2
    return out


def score_groups(kind, requests: list[Encoded], groups, pad_id: int, bar) -> tuple[dict, dict]:
    """(request index -> (log-likelihood, greedy), counters) for every request of ``groups``.

    A model compiles once per distinct shape, so shapes are few: suffix rows have one length and one query
    count per task (at least ``SUFFIX_ROW`` tokens, so that a group needs few rows), while the trunk length
    (from ``LENGTHS``) and the row count (a power of two) follow each group, so that a long trunk does not
    make every group pay for it."""
    out, counters = {}, {"trunks": len(groups), "trunk_tokens": 0, "tokens": 0, "rows": 0, "padded_tokens": 0}
    suffixes = [[Encoded(requests[i].input_ids[P:], requests[i].target_ids) for i in members]
                for P, members in groups]
    L = max(SUFFIX_ROW, _bucket(max(len(s.input_ids) for group in suffixes for s in group),
                                "request past its prefix"))
    packed = [pack(group, L) for group in suffixes]
    Q = _pow2(max(len(r.queries) for rows, _ in packed for r in rows), 8)
    for (P, members), (rows, where) in zip(groups, packed):
        Pb = _bucket(P, "shared prefix")
        trunk_P = np.full(Pb, pad_id, np.int32)
        trunk_P[:P] = requests[members[0]].input_ids[:P]
        lp_R, greedy_R = [], []
        for start in range(0, len(rows), MAX_ROWS):  # a big group runs its trunk again per chunk of rows
            chunk = rows[start:start + MAX_ROWS]
            lp_BQ, greedy_BQ = _run_chunk(kind, trunk_P, P, chunk, L, Q, pad_id)
            lp_R.extend(lp_BQ[:len(chunk)])
            greedy_R.extend(greedy_BQ[:len(chunk)])
            counters["padded_tokens"] += Pb + _pow2(len(chunk)) * L
        for i, (r, qs) in zip(members, where):
            out[i] = (float(np.sum(lp_R[r][qs], dtype=np.float64)), bool(np.all(greedy_R[r][qs])))
        counters["trunk_tokens"] += P
        counters["rows"] += len(rows)
        counters["tokens"] += sum(len(row.tokens) for row in rows)
        bar.update(len(members))
    return out, counters


def _run_chunk(kind, trunk_P, P: int, rows, L: int, Q: int, pad_id: int):
    """Per-query (log p, greedy) arrays [B, Q] of up to ``MAX_ROWS`` suffix rows over one trunk."""
    Pb = len(trunk_P)
    B = _pow2(len(rows))
    S = Pb + L
    tokens_BL = np.full((B, L), pad_id, np.int32)
    pos_BL = np.full((B, L), P, np.int32)
    mask_BLS = np.zeros((B, L, S), bool)
    mask_BLS[:, np.arange(L), Pb + np.arange(L)] = True  # padding sees itself only
    qpos_BQ = np.zeros((B, Q), np.int32)
    qtok_BQ = np.zeros((B, Q), np.int32)
    for b, row in enumerate(rows):
        n = len(row.tokens)
        tokens_BL[b, :n], pos_BL[b, :n] = row.tokens, P + np.asarray(row.depth)
        mask_BLS[b, :, Pb:] = row.mask(L)
        mask_BLS[b, :n, :P] = True
        for (node, t), q in row.queries.items():
            qpos_BQ[b, q], qtok_BQ[b, q] = node, t
    trunk_route = route_BL = None
    if kind.route is not None:
        route_BS = np.asarray(kind.route(*full_view(trunk_P, P, tokens_BL, pos_BL, mask_BLS)), np.int32)
        trunk_route, route_BL = jnp.asarray(route_BS[:1, :Pb]), jnp.asarray(route_BS[:, Pb:])
    x_BLD = _trunk_hidden(kind.graphdef, kind.state, jnp.asarray(trunk_P[None]), P, trunk_route,
                          jnp.asarray(tokens_BL), jnp.asarray(pos_BL), jnp.asarray(mask_BLS), route_BL)
    out = query_scores(kind.graphdef, kind.state, x_BLD, jnp.asarray(qpos_BQ), jnp.asarray(qtok_BQ))
    return tuple(np.asarray(a) for a in out)
