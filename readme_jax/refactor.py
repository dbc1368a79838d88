"""Expert construction (Read-ME §3): per-layer domain top-k neuron sets -> MoE weights.

1. For each domain d and layer n, rank the F MLP neurons by mean |act(gate(x)) * up(x)| on d's text
   and keep the top k = floor(keep_ratio * F) (exactly k: ties broken by neuron index, where the
   reference code's strict threshold keeps k-1).
2. permanent_n = neurons in every domain's set; expert e's specific part = set_e minus permanent_n,
   so a token routed to e uses exactly set_e (k neurons); expert index = domain index in all layers.
3. Pruned-dense baseline: one global top-k per layer by the domain-averaged statistic.
4. MoE weights never mutate the dense state: masked form copies it plus masks; sliced form gathers
   gate/up columns and down rows per expert.

``refactor(lm, stats, folder)`` runs steps 1-3 and writes the MoE folder (what ``readme-jax refactor`` does).
"""

import dataclasses
from pathlib import Path

import numpy as np

from readme_jax.errors import ReadmeJaxError


def top_k_count(d_ff: int, keep_ratio: float) -> int:
    if not 0 < keep_ratio <= 1:
        raise ReadmeJaxError(f"keep ratio {keep_ratio} must be in (0, 1]")
    return max(1, int(keep_ratio * d_ff))


def top_k_masks(mean_abs_NF: np.ndarray, k: int) -> np.ndarray:
    """Boolean [N, F]: the k largest entries of each row (stable: lower index wins ties)."""
    order_NF = np.argsort(-mean_abs_NF, axis=-1, kind="stable")
    mask_NF = np.zeros(mean_abs_NF.shape, bool)
    np.put_along_axis(mask_NF, order_NF[:, :k], True, axis=-1)
    return mask_NF


def domain_masks(mean_abs_DNF: np.ndarray, keep_ratio: float) -> np.ndarray:
    """Expert neuron sets [N, E, F] (E = number of domains, in the given domain order)."""
    k = top_k_count(mean_abs_DNF.shape[-1], keep_ratio)
    return np.stack([top_k_masks(m, k) for m in mean_abs_DNF], axis=1)


def pruned_mask(mean_abs_DNF: np.ndarray, keep_ratio: float) -> np.ndarray:
    """The pruned-dense baseline's neurons [N, 1, F]: global top-k of the domain-averaged statistic.

    Each domain's statistic is normalised by its own mean first, so no domain dominates by scale.
    """
    norm = mean_abs_DNF / mean_abs_DNF.mean(axis=-1, keepdims=True).clip(1e-12)
    k = top_k_count(mean_abs_DNF.shape[-1], keep_ratio)
    return top_k_masks(norm.mean(axis=0), k)[:, None, :]


def expert_report(masks_NEF: np.ndarray, domains) -> dict:
    """Per-layer permanent size and pairwise domain overlap (Jaccard), as plain JSON-able data."""
    N, E, F = masks_NEF.shape
    permanent_N = masks_NEF.all(axis=1).sum(-1)
    inter_NEE = np.einsum("nef,ngf->neg", masks_NEF.astype(np.int64), masks_NEF.astype(np.int64))
    size_NE = masks_NEF.sum(-1)
    union_NEE = size_NE[:, :, None] + size_NE[:, None, :] - inter_NEE
    jaccard_NEE = inter_NEE / np.maximum(union_NEE, 1)
    return {
        "domains": list(domains), "layers": N, "d_ff": F, "expert_width": int(size_NE[0, 0]),
        "permanent_per_layer": permanent_N.tolist(),
        "permanent_fraction_mean": float(permanent_N.mean() / size_NE[0, 0]),
        "jaccard_mean": jaccard_NEE.mean(axis=0).round(4).tolist(),
        "jaccard_per_layer_offdiag_mean": [float((j.sum() - np.trace(j)) / max(E * (E - 1), 1)) for j in jaccard_NEE],
    }


def masked_pure(dense_pure: dict, masks_NEF: np.ndarray) -> dict:
    """Pure state of the masked-form MoE: the dense weights (shared, not copied) + ``mask_EF`` per layer."""
    out = dict(dense_pure)
    out["blocks"] = {n: {**blk, "mask_EF": np.asarray(masks_NEF[n])} for n, blk in dense_pure["blocks"].items()}
    return out


def sliced_pure(dense_pure: dict, masks_NEF: np.ndarray) -> dict:
    """Pure state of the sliced-form MoE: per expert, its X neurons' gate/up columns and down rows."""
    x = int(masks_NEF[0, 0].sum())
    if not (masks_NEF.sum(-1) == x).all():
        raise ReadmeJaxError("every expert must hold the same number of neurons to be sliced")
    out = {k: v for k, v in dense_pure.items() if k != "blocks"}
    out["blocks"] = {}
    for n, blk in dense_pure["blocks"].items():
        neurons_EX = np.stack([np.flatnonzero(m) for m in masks_NEF[n]])  # each expert's neurons, in F order
        rest = {k: v for k, v in blk.items() if k not in ("w_gate_DF", "w_up_DF", "w_down_FD", "mask_EF")}
        out["blocks"][n] = {
            **rest,
            "w_gate_EDX": np.asarray(blk["w_gate_DF"])[:, neurons_EX].transpose(1, 0, 2),
            "w_up_EDX": np.asarray(blk["w_up_DF"])[:, neurons_EX].transpose(1, 0, 2),
            "w_down_EXD": np.asarray(blk["w_down_FD"])[neurons_EX],
        }
    return out


def build_moe(dense_cfg, dense_pure: dict, masks_NEF: np.ndarray, form: str = "masked", domains=(),
              keep_ratio: float | None = None, kernel: str | None = None):
    """A ``MoELlama`` in the requested form from dense weights and expert neuron sets."""
    from readme_jax.moe import MoEConfig, MoELlama
    from readme_jax.weights import build_model

    N, E, F = masks_NEF.shape
    if (N, F) != (dense_cfg.n_layers, dense_cfg.d_ff):
        raise ReadmeJaxError(f"expert masks have {N} layers x {F} neurons; the model has "
                             f"{dense_cfg.n_layers} x {dense_cfg.d_ff} (stats from another model?)")
    width = int(masks_NEF[0, 0].sum())
    cfg = MoEConfig.from_dense(dense_cfg, n_experts=E, expert_width=width, form=form, domains=tuple(domains),
                               keep_ratio=keep_ratio if keep_ratio is not None else width / F, kernel=kernel)
    pure = masked_pure(dense_pure, masks_NEF) if form == "masked" else sliced_pure(dense_pure, masks_NEF)
    return build_model(cfg, pure, MoELlama)


@dataclasses.dataclass(frozen=True)
class Refactoring:
    """What ``refactor`` produced: the MoE folder, the expert neuron sets, the pruned-dense baseline's neurons
    and the report saved beside the weights (``expert_report`` plus the profiled model's name)."""

    folder: Path
    masks_NEF: np.ndarray
    pruned_N1F: np.ndarray
    report: dict


def refactor(lm, stats, folder, keep_ratio: float = 0.5) -> Refactoring:
    """Steps 1-3 from a dense ``LM`` and its ``ProfileStats``, written atomically as a Read-ME MoE folder
    (``readme_jax.moe_io``) that ``readme_jax.load`` opens and ``readme-jax train`` tunes."""
    from flax import nnx

    from readme_jax.lm import jax_to_numpy
    from readme_jax.moe_io import save_moe

    if getattr(lm.cfg, "n_experts", None) is not None:
        raise ReadmeJaxError(f"{lm.source}: already a MoE; refactor the dense model it came from")
    stats.check_model(lm.cfg)
    masks_NEF = domain_masks(stats.mean_abs_DNF, keep_ratio)
    pruned_N1F = pruned_mask(stats.mean_abs_DNF, keep_ratio)
    report = expert_report(masks_NEF, stats.domains)
    report["stats_model"] = stats.model
    out = save_moe(folder, lm.cfg, jax_to_numpy(nnx.to_pure_dict(lm.state)), masks_NEF, stats.domains,
                   keep_ratio, lm.tokenizer, report=report, pruned_N1F=pruned_N1F)
    return Refactoring(Path(out), masks_NEF, pruned_N1F, report)
