"""Held-out evaluation: per-domain perplexity of dense, pruned-dense and MoE variants, plus routes.

Per domain and batch of held-out blocks:
1. the dense teacher pass gives dense NLL and every layer's top-k overlap with each expert (oracle);
2. the MoE runs under oracle routes and under domain-label routes; the pruned-dense baseline (one
   global top-k neuron set per layer, same active width) runs with its single expert;
3. with a trained folder (``readme-jax train``), its pre-gating router routes the batch from token ids
   alone and the tuned MoE runs under those routes (``moe_router``); the router's choices are scored
   against the oracle (top-1 agreement) and for temporal locality;
4. perplexity = exp(mean next-token NLL) over all predicted tokens of the domain.
The per-layer oracle choices are kept for the analysis (transition matrices, mutual information).
"""

import dataclasses
import math
import time

import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from readme_jax import oracle
from readme_jax.errors import ReadmeJaxError
from readme_jax.refactor import build_moe


@dataclasses.dataclass
class Routes:
    """Per-token routing records of an evaluation, flattened over blocks: T tokens."""

    layer_choice_NT: np.ndarray  # per-layer oracle expert
    oracle_T: np.ndarray  # summed-over-layers oracle expert
    domain_T: np.ndarray  # domain index of the token's document
    position_T: np.ndarray  # position inside its block (0 starts a new sequence)
    router_T: np.ndarray | None = None  # the trained router's expert, when a trained folder was evaluated

    def save(self, path):
        from readme_jax.atomic import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **{k: v for k, v in dataclasses.asdict(self).items() if v is not None})

    @classmethod
    def load(cls, path):
        data = np.load(path)
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def _agreed_prefix(agree_L, w_L) -> int:
    """How many of the weighted positions agree before the first that does not."""
    a = np.asarray(agree_L)[np.asarray(w_L) > 0]
    return int(len(a) if a.all() else np.argmin(a))


def evaluate(lm, masks_NEF: np.ndarray, pruned_N1F: np.ndarray, blocks: dict[str, np.ndarray],
             batch_size: int = 4, progress: bool = True, trained=None, pruned_tuned=None, weights=None):
    """(report dict, Routes). ``blocks``: held-out [n, L] per domain, in expert order.

    ``trained``: None, or a ``MoELM`` with a router (the output of ``readme-jax train``) sharing the masks.
    ``pruned_tuned``: None, or the one-expert ``MoELM`` of ``readme-jax train --baseline pruned``.
    ``weights``: None (every next-token position counts), or {domain: 0/1 [n, L-1]}, the positions that count
    (a chat answer's, ``readme_jax.chat_eval``). Then every kind but dense also gets ``agreed_prefix``: per
    sequence, the counted positions whose top-1 equals the dense model's before the first that does not, averaged
    (how far its greedy answer would follow the dense one).
    """
    from readme_jax.lm import jax_to_numpy

    cfg = lm.cfg
    dense_pure = jax_to_numpy(nnx.to_pure_dict(lm.state))
    domains = list(blocks)
    # The sliced form, the inference form (each token computes only its expert's neurons; == masked, tested).
    moe = nnx.split(build_moe(cfg, dense_pure, masks_NEF, "sliced", domains))
    pruned = nnx.split(build_moe(cfg, dense_pure, pruned_N1F, "sliced", ["pruned"]))
    k = int(masks_NEF[0, 0].sum())
    names = ("dense", "pruned_dense") + (("pruned_tuned",) if pruned_tuned else ()) + (
        "moe_oracle", "moe_domain") + (("moe_router",) if trained else ())
    nll = {name: {} for name in names}
    agree = {name: {} for name in names if name != "dense"}  # top-1 next-token agreement with the dense model
    kl = {name: {} for name in names if name != "dense"}  # mean KL(dense || kind) per next-token position
    prefix = {name: {} for name in agree}  # with weights: summed agreed-prefix lengths
    records = {"layer": [], "oracle": [], "domain": [], "position": [], "router": []}
    total = sum(len(b) for b in blocks.values())
    bar = tqdm(total=total, desc="evaluating", unit="block", disable=not progress)
    t0, n_tok = time.perf_counter(), 0
    for d, name in enumerate(domains):
        sums = dict.fromkeys(nll, 0.0)
        count, n_seq = 0.0, 0
        for start in range(0, len(blocks[name]), batch_size):
            batch = blocks[name][start:start + batch_size]
            n = len(batch)
            if n < batch_size:  # pad with copies to keep one compiled shape; drop them below
                batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - n, axis=0)])
            ref, overlap = oracle.teacher_logp(lm.graphdef, lm.state, batch, masks_NEF, k)  # one dense pass
            dense_nll = -jnp.take_along_axis(ref, jnp.asarray(batch)[:, 1:, None], axis=-1)[..., 0]  # on device
            layer_ch, oracle_ch = (np.asarray(a) for a in oracle.oracle_choices(overlap))
            domain_ch = np.full(batch.shape, d, np.int32)
            zeros = np.zeros_like(domain_ch)
            results = {  # kind -> (nll, top-1 agreement with dense, KL(dense || kind)), each [B, L-1]
                "moe_oracle": oracle.routed_vs_dense(*moe, batch, oracle_ch, ref),
                "moe_domain": oracle.routed_vs_dense(*moe, batch, domain_ch, ref),
                "pruned_dense": oracle.routed_vs_dense(*pruned, batch, zeros, ref),
            }
            if pruned_tuned is not None:
                results["pruned_tuned"] = oracle.routed_vs_dense(pruned_tuned.graphdef, pruned_tuned.state, batch,
                                                                 zeros, ref)
            if trained is not None:
                router_ch = trained.route(batch)
                results["moe_router"] = oracle.routed_vs_dense(trained.graphdef, trained.state, batch, router_ch,
                                                               ref)
                records["router"].append(router_ch[:n].reshape(-1))
            w_BL = (np.ones((n, batch.shape[1] - 1)) if weights is None
                    else np.asarray(weights[name][start:start + n], np.float64))
            sums["dense"] += float((np.asarray(dense_nll)[:n] * w_BL).sum())
            for key, (nll_BL, agree_BL, kl_BL) in results.items():
                agree_BL = np.asarray(agree_BL)[:n]
                sums[key] += float((np.asarray(nll_BL)[:n] * w_BL).sum())
                agree[key][name] = agree[key].get(name, 0.0) + float((agree_BL * w_BL).sum())
                kl[key][name] = kl[key].get(name, 0.0) + float((np.asarray(kl_BL)[:n] * w_BL).sum())
                if weights is not None:
                    prefix[key][name] = prefix[key].get(name, 0.0) + sum(map(_agreed_prefix, agree_BL, w_BL))
            count += float(w_BL.sum())
            n_seq += n
            records["layer"].append(layer_ch[:, :n].reshape(cfg.n_layers, -1))
            records["oracle"].append(oracle_ch[:n].reshape(-1))
            records["domain"].append(domain_ch[:n].reshape(-1))
            records["position"].append(np.tile(np.arange(batch.shape[1]), n))
            n_tok += n * batch.shape[1]
            bar.update(n)
        if count == 0:
            raise ReadmeJaxError(f"{name}: no position to score (its weights are all 0)")
        for key in nll:
            nll[key][name] = sums[key] / count
        for key in agree:
            agree[key][name] /= count
            kl[key][name] /= count
            if weights is not None:
                prefix[key][name] /= n_seq
    bar.close()
    E = masks_NEF.shape[1]
    from readme_jax.moe import MoEConfig

    moe_cfg = MoEConfig.from_dense(cfg, n_experts=E, expert_width=k)
    report = {
        "perplexity": {key: {dom: math.exp(v) for dom, v in per.items()} for key, per in nll.items()},
        "agreement_with_dense": agree,
        "kl_to_dense": kl,
        "active_params": {"dense": cfg.num_params(), "pruned_dense": moe_cfg.active_params(),
                          "moe": moe_cfg.active_params()},  # pruned_tuned: as pruned_dense
        "total_params": {"dense": cfg.num_params(), "pruned_dense": moe_cfg.active_params(),
                         "moe": moe_cfg.total_params(duplicated=True),
                         "moe_unique": moe_cfg.total_params(duplicated=False)},
        "tokens_per_domain": {name: int(blocks[name].size) for name in domains},
        "domains": domains,
        "eval_tokens_per_s": n_tok * len(names) / (time.perf_counter() - t0),
    }
    if weights is not None:
        report["agreed_prefix"] = prefix
    domain_T, oracle_T = np.concatenate(records["domain"]), np.concatenate(records["oracle"])
    router_T = np.concatenate(records["router"]) if trained is not None else None
    if router_T is not None:
        from readme_jax.analysis import temporal

        position_T = np.concatenate(records["position"])
        agree = router_T == oracle_T
        report["router"] = {
            "accuracy_vs_oracle": float(agree.mean()),
            "accuracy_vs_oracle_per_domain": {d: float(agree[domain_T == i].mean()) for i, d in enumerate(domains)},
            "temporal_locality": float(temporal(router_T, position_T, max_distance=1)[0]),
            "oracle_temporal_locality": float(temporal(oracle_T, position_T, max_distance=1)[0]),
        }
    routes = Routes(layer_choice_NT=np.concatenate(records["layer"], axis=1), oracle_T=oracle_T, domain_T=domain_T,
                    position_T=np.concatenate(records["position"]), router_T=router_T)
    return report, routes
