"""Routing analysis from per-layer oracle choices (Read-ME §2.2 and §5.3).

1. Transition matrix between adjacent layers' choices, P(expert at n+1 | expert at n), and their
   mutual information I(S_n; S_{n+1}) in bits: high MI means per-layer routing is redundant, which is
   the paper's case for one pre-gating router.
2. Temporal locality of the summed oracle choice: the fraction of tokens whose expert equals the
   previous token's, and a histogram of temporal distances (tokens since the last token of the same
   sequence that chose the same expert).
3. Domain -> expert confusion: how often each domain's tokens pick each expert.
"""

import numpy as np


def transition_counts(layer_choice_NT: np.ndarray, E: int) -> np.ndarray:
    """[N-1, E, E]: counts of (expert at layer n, expert at layer n+1)."""
    N = layer_choice_NT.shape[0]
    out = np.zeros((N - 1, E, E), np.int64)
    for n in range(N - 1):
        np.add.at(out[n], (layer_choice_NT[n], layer_choice_NT[n + 1]), 1)
    return out


def mutual_information(joint_EE: np.ndarray) -> float:
    """I(X; Y) in bits from a joint count table."""
    p = joint_EE / max(joint_EE.sum(), 1)
    px, py = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log2(p[nz] / (px @ py)[nz])).sum())


def entropy(counts: np.ndarray) -> float:
    p = counts / max(counts.sum(), 1)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def temporal(oracle_T: np.ndarray, position_T: np.ndarray, max_distance: int = 64):
    """(fraction same as previous token, histogram of temporal distances [max_distance + 1])."""
    same, eligible = 0, 0
    hist = np.zeros(max_distance + 1, np.int64)  # last bin: farther or never seen in the sequence
    last_seen: dict[int, int] = {}
    for t, (e, pos) in enumerate(zip(oracle_T.tolist(), position_T.tolist())):
        if pos == 0:
            last_seen = {}
        else:
            eligible += 1
            same += int(oracle_T[t - 1] == e)
            dist = pos - last_seen[e] if e in last_seen else max_distance
            hist[min(dist, max_distance)] += 1
        last_seen[e] = pos
    return same / max(eligible, 1), hist


def analyze(routes, domains, E: int) -> dict:
    trans = transition_counts(routes.layer_choice_NT, E)
    mi = [mutual_information(t) for t in trans]
    h_next = [entropy(t.sum(0)) for t in trans]
    frac_same, hist = temporal(routes.oracle_T, routes.position_T)
    confusion = np.zeros((len(domains), E), np.int64)
    np.add.at(confusion, (routes.domain_T, routes.oracle_T), 1)
    cond = trans / np.maximum(trans.sum(-1, keepdims=True), 1)
    return {
        "layers": int(routes.layer_choice_NT.shape[0]), "experts": E, "domains": list(domains),
        "tokens": int(routes.oracle_T.size),
        "mutual_information_bits": mi,
        "next_layer_entropy_bits": h_next,
        "mi_fraction_of_entropy": [m / h if h > 0 else 0.0 for m, h in zip(mi, h_next)],
        "transition_last_pair": cond[-1].round(4).tolist(),
        "transition_counts": trans.tolist(),
        "temporal_same_as_previous": frac_same,
        "temporal_distance_histogram": hist.tolist(),
        "domain_expert_confusion": (confusion / np.maximum(confusion.sum(1, keepdims=True), 1)).round(4).tolist(),
        "domain_expert_accuracy": float(np.trace(confusion[:, : len(domains)]) / max(confusion.sum(), 1))
        if len(domains) == E else None,
    }


def plot(result: dict, out_dir) -> list:
    """PNG plots next to the JSON: MI per layer pair, last-pair transition matrix, temporal distances,
    domain confusion. Returns the written paths. Bare ``Figure``s (no pyplot), so the caller's matplotlib backend
    (a notebook's inline one) is left alone."""
    from pathlib import Path

    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    pairs = np.arange(len(result["mutual_information_bits"]))
    ax.plot(pairs, result["mutual_information_bits"], "o-", label="I(S_n; S_n+1)")
    ax.plot(pairs, result["next_layer_entropy_bits"], "--", color="gray", label="H(S_n+1)")
    ax.set(xlabel="layer pair (n, n+1)", ylabel="bits", title="Adjacent-layer oracle choices: mutual information")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "mutual_information.png")
    fig.savefig(paths[-1], dpi=110)

    def heat(matrix, title, xlabel, ylabel, yticks, name):
        fig = Figure(figsize=(5, 4.2))
        ax = fig.subplots()
        im = ax.imshow(np.asarray(matrix), vmin=0, vmax=1, cmap="viridis")
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.set_yticks(range(len(yticks)), yticks)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        paths.append(out / name)
        fig.savefig(paths[-1], dpi=110)
    
    n = result["layers"]
    heat(result["transition_last_pair"], f"P(expert at layer {n - 1} | layer {n - 2})",
         f"expert at layer {n - 1}", f"expert at layer {n - 2}", list(range(result["experts"])), "transition.png")
    heat(result["domain_expert_confusion"], "Oracle expert by domain", "expert", "domain", result["domains"],
         "domain_confusion.png")
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    hist = np.asarray(result["temporal_distance_histogram"])
    ax.bar(np.arange(len(hist)), np.maximum(hist, 0.5), log=True)
    ax.set(xlabel="temporal distance (last bin: farther / first use)", ylabel="tokens (log)",
           title=f"Temporal locality: {100 * result['temporal_same_as_previous']:.1f}% same as previous token")
    fig.tight_layout()
    paths.append(out / "temporal_distance.png")
    fig.savefig(paths[-1], dpi=110)
    return paths
