"""Would a learned next-expert head on the router forecast decode tokens better than the home statistics?

``belady-expected`` (docs/serving.md, section 8) forecasts a running request's next expert from its (home,
current expert) context. Issue 17 allows a small learned head on the router instead, if it is shown to be
better. This script measures that before anything is built: on the trained router of a MoE folder it

1. runs the router over the domains' *train* text (the head's training data) and over the held-out sequences
   that ``readme-jax trace`` routes (the evaluation data; never seen in training);
2. fits a linear head (optax AdamW, full batch) from the router's final hidden state at token t, the one-hot of
   its expert, and its expert shares over the last ``home_window`` tokens, to the router's expert of token t+1;
3. prints next-expert accuracy and negative log-likelihood on the held-out sequences for: "stays on the current
   expert", "goes to its home", the (home, current) context table estimated on the same train tokens (what
   the policy uses), and the learned head.

    python scripts/next_expert_study.py --moe out/demo/moe_trained [--train-blocks 100] [--json]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def router_features(lm, ids_BL, batch: int = 8):
    """(final hidden states [B, L, D], router experts [B, L]) of right-padded rows."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef = lm.router_graphdef

    @jax.jit
    def run(state, tokens_BL):
        router = nnx.merge(graphdef, state)
        B, L = tokens_BL.shape
        pos_BL = jnp.broadcast_to(jnp.arange(L), (B, L))
        x_BLD, _ = router.hidden(tokens_BL, pos_BL, jnp.ones((B, L), bool))  # causal: padding after a row is unseen
        return x_BLD, router.head(x_BLD).argmax(-1)

    xs, es = [], []
    for start in range(0, len(ids_BL), batch):
        rows = np.zeros((batch, ids_BL.shape[1]), np.int32)  # one compile: the last chunk is padded
        chunk = ids_BL[start:start + batch]
        rows[:len(chunk)] = chunk
        x_BLD, e_BL = run(lm.router_state, jnp.asarray(rows))
        xs.append(np.asarray(x_BLD)[:len(chunk)])
        es.append(np.asarray(e_BL)[:len(chunk)])
    return np.concatenate(xs), np.concatenate(es)


def examples(x_BLD, e_BL, lengths, num_experts: int, window: int):
    """Per (row, t < length - 1): features, next expert, current expert, home (as ``serve.core.home``)."""
    feats, nxt, cur, homes = [], [], [], []
    eye = np.eye(num_experts)
    for row, n in enumerate(lengths):
        e = e_BL[row, :n]
        onehot = eye[e]
        csum = np.cumsum(onehot, 0)
        before = np.vstack([np.zeros((window, num_experts)), csum])[:n]
        recent = csum - before  # counts over the last `window` tokens, the current one included
        home = (recent + 0.5 * onehot).argmax(1)  # the current expert counts half a token more; ties: lowest id
        seen = np.minimum(np.arange(1, n + 1), window)[:, None]
        feats.append(np.hstack([x_BLD[row, :n - 1], onehot[:n - 1], (recent / seen)[:n - 1]]))
        nxt.append(e[1:])
        cur.append(e[:-1])
        homes.append(home[:-1])
    return (np.vstack(feats).astype(np.float32), np.concatenate(nxt), np.concatenate(cur), np.concatenate(homes))


def fit_linear_head(f_NF, y_N, num_experts: int, steps: int, lr: float = 3e-3, weight_decay: float = 1e-4):
    """Weights of a standardised linear softmax head, as a function ``f -> log-probabilities``."""
    import jax
    import jax.numpy as jnp
    import optax

    mu, sd = f_NF.mean(0), f_NF.std(0) + 1e-6
    f = jnp.asarray((f_NF - mu) / sd)
    y = jnp.asarray(y_N)
    params = {"w_FE": jnp.zeros((f.shape[1], num_experts)), "b_E": jnp.zeros(num_experts)}
    opt = optax.adamw(lr, weight_decay=weight_decay)
    opt_state = opt.init(params)

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(f @ p["w_FE"] + p["b_E"], y).mean()

    @jax.jit
    def step(p, s):
        value, grads = jax.value_and_grad(loss)(p)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    for _ in range(steps):
        params, opt_state, _ = step(params, opt_state)
    w, b = np.asarray(params["w_FE"]), np.asarray(params["b_E"])

    def log_probs(g_NF):
        logits = ((g_NF - mu) / sd) @ w + b
        logits -= logits.max(1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(1, keepdims=True))

    return log_probs


def score(log_p_NE, y_N) -> dict:
    return {"accuracy": float((log_p_NE.argmax(1) == y_N).mean()),
            "nll": float(-log_p_NE[np.arange(len(y_N)), y_N].mean())}


def point(guess_N, y_N) -> dict:
    return {"accuracy": float((guess_N == y_N).mean()), "nll": None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--moe", default="out/demo/moe_trained", help="a MoE folder with a trained router")
    ap.add_argument("--train-blocks", type=int, default=100, help="512-token train blocks per domain")
    ap.add_argument("--seqs-per-domain", type=int, default=64, help="held-out sequences per domain (as trace)")
    ap.add_argument("--doc-chars", type=int, default=4096)
    ap.add_argument("--max-tokens", type=int, default=768)
    ap.add_argument("--steps", type=int, default=600, help="full-batch AdamW steps of the head")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import readme_jax
    from readme_jax.corpus_blocks import domain_blocks, select_domains
    from readme_jax.data.heldout_text import heldout_sequences
    from serve.core.home import HOME_WINDOW

    t0 = time.perf_counter()
    lm = readme_jax.load(args.moe)
    if lm.router is None:
        raise SystemExit(f"{args.moe}: no trained router")
    E = lm.router.cfg.n_experts
    domains = select_domains(tuple(lm.cfg.domains))
    train_BL = np.concatenate(list(domain_blocks(lm.tokenizer, domains, "train", 512, args.train_blocks).values()))
    seqs = heldout_sequences(lm.tokenizer, domains, args.seqs_per_domain, args.doc_chars, args.max_tokens)
    held_BL = np.zeros((len(seqs), max(len(s.ids_T) for s in seqs)), np.int32)
    for row, s in enumerate(seqs):
        held_BL[row, :len(s.ids_T)] = s.ids_T

    train = examples(*router_features(lm, train_BL), [train_BL.shape[1]] * len(train_BL), E, HOME_WINDOW)
    held = examples(*router_features(lm, held_BL), [len(s.ids_T) for s in seqs], E, HOME_WINDOW)
    f_tr, y_tr, cur_tr, home_tr = train
    f_ho, y_ho, cur_ho, home_ho = held

    counts = np.full((E, E, E), 0.1)  # the policy's (home, current) table, lightly smoothed
    np.add.at(counts, (home_tr, cur_tr, y_tr), 1.0)
    table = np.log(counts / counts.sum(2, keepdims=True))
    head = fit_linear_head(f_tr, y_tr, E, args.steps)
    rows = {
        "stays on the current expert": point(cur_ho, y_ho),
        "goes to its home": point(home_ho, y_ho),
        "(home, current) table": score(table[home_ho, cur_ho], y_ho),
        "learned linear head": score(head(f_ho), y_ho),
    }
    result = {"moe": args.moe, "train_tokens": int(len(y_tr)), "heldout_tokens": int(len(y_ho)),
              "home_window": HOME_WINDOW, "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"next-expert forecast on {len(y_ho):,} held-out transitions (fitted on {len(y_tr):,} train tokens)")
    print("| forecast | accuracy % | NLL (nats) |\n|---|---|---|")
    for name, r in rows.items():
        nll = "–" if r["nll"] is None else f"{r['nll']:.3f}"
        print(f"| {name} | {100 * r['accuracy']:.1f} | {nll} |")
    print(f"({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
