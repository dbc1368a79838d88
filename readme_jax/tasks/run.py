"""Every model kind over the chosen tasks: accuracies with their 95% intervals, side by side.

Kinds (``model_kinds``): ``dense``; ``pruned_dense`` (one global top-k neuron set per layer, the MoE's active
width); ``pruned_tuned`` (the same, tuned with the expert stage's budget: ``readme-jax train --baseline
pruned``), when its folder exists; ``moe_oracle`` (the refactored MoE, each token on the expert the dense
teacher's activations pick); ``moe_router`` (the trained MoE routed by its own router), when trained.

Metrics as the EleutherAI harness defines them: ``acc`` = the gold choice has the highest log-likelihood;
``acc_norm`` = the same after dividing each log-likelihood by its choice's length in characters; LAMBADA's
``acc`` = every token of the last word is the greedy prediction, ``perplexity`` = exp(-mean log-likelihood of
the last word). Each accuracy comes with its standard error sqrt(p(1-p)/(n-1)) and the 95% interval ±1.96 of it.
"""

import math
import time

import numpy as np

from readme_jax.errors import ReadmeJaxError
from readme_jax.tasks import registry, score

NORMED = ("arc_easy", "arc_challenge", "hellaswag", "piqa")  # tasks the harness reports acc_norm for


def _rate(hits) -> dict:
    hits = np.asarray(hits, np.float64)
    n = len(hits)
    p = float(hits.mean()) if n else float("nan")
    se = math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else float("nan")
    return {"value": p, "stderr": se, "ci95": 1.96 * se}


def task_metrics(task: str, docs: list[registry.Doc], logprob: list[float], greedy: list[bool]) -> dict:
    """Metrics of one task from its requests' scores (in ``docs`` order, request by request)."""
    out, at = {}, 0
    acc, acc_norm, lam_ll = [], [], []
    for doc in docs:
        n = len(doc.requests)
        ll = np.asarray(logprob[at:at + n])
        if task == "lambada":
            acc.append(greedy[at])
            lam_ll.append(ll[0])
        else:
            acc.append(int(np.argmax(ll)) == doc.gold)
            lengths = np.asarray([max(1, len(c)) for c in doc.choices], np.float64)
            acc_norm.append(int(np.argmax(ll / lengths)) == doc.gold)
        at += n
    out["acc"] = _rate(acc)
    if task in NORMED:
        out["acc_norm"] = _rate(acc_norm)
    if task == "lambada":
        out["perplexity"] = math.exp(-float(np.mean(lam_ll)))
    return out


def evaluate_tasks(kinds, tasks: list[str], tokenizer, root, task_data: dict | None = None, limit: int | None = None,
                   max_len: int = 2048, progress: bool = True) -> dict:
    """``kinds``: (name, builder) pairs; each builder returns a ``score.Kind`` and is called once, so only one
    model lives at a time. The report: per task its document count and, per kind, its metrics."""
    task_data = task_data or {}
    docs = {t: registry.load_docs(t, root, task_data.get(t), limit) for t in tasks}  # bad data fails first
    encoded = {t: [score.encode_request(tokenizer, c, k, max_len) for d in docs[t] for c, k in d.requests]
               for t in tasks}
    report = {"tasks": {t: {"documents": len(docs[t]), "requests": len(encoded[t])} for t in tasks},
              "kinds": [], "seconds": {}, "limit": limit, "max_len": max_len}
    for name, build in kinds:
        kind = build()
        t0 = time.perf_counter()
        for t in tasks:
            result = score.score(kind, encoded[t], tokenizer.pad_id, progress, desc=f"{name} {t}")
            report["tasks"][t][name] = task_metrics(t, docs[t], result["logprob"], result["greedy"])
        report["seconds"][name] = time.perf_counter() - t0
        report["kinds"].append(name)
        del kind
    zero = [t for t in tasks if t in registry.ZERO_SHOT]
    if zero:
        report["mean_zero_shot_acc"] = {k: float(np.mean([report["tasks"][t][k]["acc"]["value"] for t in zero]))
                                        for k in report["kinds"]}
        report["zero_shot_tasks"] = zero
    return report


def model_kinds(parts, trained=None, pruned_tuned=None):
    """(name, builder) for every kind a work folder supports (see the module docstring)."""
    from flax import nnx

    from readme_jax import oracle
    from readme_jax.refactor import build_moe
    from readme_jax.weights import build_model

    cfg, dense_pure, masks_NEF = parts["cfg"], parts["dense_pure"], parts["masks_NEF"]
    k = int(masks_NEF[0, 0].sum())

    def zeros(tokens_BL, pos_BL, mask_BLL):
        return np.zeros(tokens_BL.shape, np.int32)

    def dense():
        return score.Kind("dense", *nnx.split(build_model(cfg, dense_pure)))

    def pruned():
        return score.Kind("pruned_dense", *nnx.split(build_moe(cfg, dense_pure, parts["pruned_N1F"], "sliced",
                                                               ["pruned"])), zeros)

    def moe_oracle():
        teacher = nnx.split(build_model(cfg, dense_pure))

        def route(tokens_BL, pos_BL, mask_BLL):
            _, overlap = oracle.teacher_step(*teacher, tokens_BL, masks_NEF, k, pos_BL, mask_BLL)
            return np.asarray(oracle.oracle_choices(overlap)[1])

        return score.Kind("moe_oracle", *nnx.split(build_moe(cfg, dense_pure, masks_NEF, "sliced",
                                                             parts["domains"])), route)

    kinds = [("dense", dense), ("pruned_dense", pruned)]
    if pruned_tuned is not None:
        kinds.append(("pruned_tuned", lambda: score.Kind("pruned_tuned", pruned_tuned.graphdef, pruned_tuned.state,
                                                         zeros)))
    kinds.append(("moe_oracle", moe_oracle))
    if trained is not None:
        from readme_jax.router import route as router_logits

        def routed(tokens_BL, pos_BL, mask_BLL):
            logits_BLE = router_logits(trained.router_graphdef, trained.router_state, tokens_BL, pos_BL,
                                       mask_BLS=mask_BLL)
            return np.asarray(logits_BLE.argmax(-1), np.int32)

        kinds.append(("moe_router", lambda: score.Kind("moe_router", trained.graphdef, trained.state, routed)))
    return kinds


def select_kinds(kinds, text: str | None):
    """The (name, builder) pairs named in ``text`` (comma-separated; None or empty: all), in ``kinds``' order."""
    if not text:
        return kinds
    asked = [k.strip() for k in text.split(",") if k.strip()]
    have = [name for name, _ in kinds]
    for name in asked:
        if name not in have:
            raise ReadmeJaxError(f"--kinds names {name!r}; this work folder has {', '.join(have)}")
    return [(name, build) for name, build in kinds if name in asked]
