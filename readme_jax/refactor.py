"""Expert construction (Read-ME §3): per-layer domain top-k neuron sets -> MoE weights.

1. For each domain d and layer n, rank the F MLP neurons by mean |act(gate(x)) * up(x)| on d's text
   and keep the top k = floor(keep_ratio * F) (exactly k: ties broken by neuron index, where the
   reference code's strict threshold keeps k-1).
2. permanent_n = neurons in every domain's set; expert e's specific part = set_e minus permanent_n,
   so a token routed to e uses exactly set_e (k neurons); expert index = domain index in all layers.
3. Pruned-dense baseline: one global top-k per layer by the domain-averaged statistic.
4. MoE weights never mutate the dense state: masked form copies it plus masks; sliced form gathers the
   permanent neurons once and each expert's specific gate/up columns and down rows (``readme_jax.moe``).

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


def sliced_pure(dense_pure: dict, masks_NEF: np.ndarray, split_shared: bool = True, stacked: bool = False,
                n_slots: int | None = None) -> tuple[dict, tuple[int, ...]]:
    """Pure state of the sliced-form MoE and its per-layer shared widths R_n.

    With ``split_shared`` the permanent neurons of layer n (in every expert's set) become the dense
    ``w_gate_up_D2R`` / ``w_down_RD`` and each expert keeps only its specific neurons; without it every
    expert holds its whole set (R_n = 0). Experts 0..C-1 fill the C slots (``n_slots``, default E), one slot
    per expert, as separate arrays or stacked over C (``stacked``, for the grouped-matmul kernels).
    """
    N, E, F = masks_NEF.shape
    k = int(masks_NEF[0, 0].sum())
    if not (masks_NEF.sum(-1) == k).all():
        raise ReadmeJaxError("every expert must hold the same number of neurons to be sliced")
    C = E if n_slots is None else n_slots
    out = {key: v for key, v in dense_pure.items() if key != "blocks"}
    out["blocks"] = {}
    shared = []
    for n, blk in dense_pure["blocks"].items():
        perm_F = masks_NEF[n].all(axis=0) if split_shared else np.zeros(F, bool)
        idx_R = np.flatnonzero(perm_F)
        idx_CX = np.stack([np.flatnonzero(m & ~perm_F) for m in masks_NEF[n][:C]])
        gate, up, down = (np.asarray(blk[name]) for name in ("w_gate_DF", "w_up_DF", "w_down_FD"))
        new = {key: v for key, v in blk.items() if key not in ("w_gate_DF", "w_up_DF", "w_down_FD", "mask_EF")}
        if idx_R.size:
            new.update(w_gate_up_D2R=np.concatenate([gate[:, idx_R], up[:, idx_R]], axis=1), w_down_RD=down[idx_R])
        if stacked:
            new.update(w_gate_CDX=gate[:, idx_CX].transpose(1, 0, 2), w_up_CDX=up[:, idx_CX].transpose(1, 0, 2),
                       w_down_CXD=down[idx_CX])
        else:
            new["experts"] = {c: {"w_gate_up_D2X": np.concatenate([gate[:, idx], up[:, idx]], axis=1),
                                  "w_down_XD": down[idx]} for c, idx in enumerate(idx_CX)}
        out["blocks"][n] = new
        shared.append(int(idx_R.size))
    table = np.full(E, -1, np.int32)
    table[:C] = np.arange(C)
    out["slot_of_expert_E"] = table
    return out, tuple(shared)


def build_moe(dense_cfg, dense_pure: dict, masks_NEF: np.ndarray, form: str = "masked", domains=(),
              keep_ratio: float | None = None, kernel: str | None = None, split_shared: bool = True,
              n_slots: int | None = None, masked_compute: str = "mask"):
    """A ``MoELlama`` in the requested form from dense weights and expert neuron sets.

    The sliced form keeps the permanent neurons apart (``split_shared``) and fills ``n_slots`` slots (default:
    every expert resident); ``kernel`` picks its slot layout (``readme_jax.moe``). ``masked_compute``: how the
    masked form computes its MLP (``"mask"`` or ``"gather"``, ``readme_jax.moe``).
    """
    from readme_jax.moe import MoEConfig, MoELlama, check_expert_width
    from readme_jax.weights import build_model

    N, E, F = masks_NEF.shape
    if (N, F) != (dense_cfg.n_layers, dense_cfg.d_ff):
        raise ReadmeJaxError(f"expert masks have {N} layers x {F} neurons; the model has "
                             f"{dense_cfg.n_layers} x {dense_cfg.d_ff} (stats from another model?)")
    width = int(masks_NEF[0, 0].sum())
    fields = dict(n_experts=E, expert_width=width, form=form, domains=tuple(domains),
                  keep_ratio=keep_ratio if keep_ratio is not None else width / F, kernel=kernel,
                  n_slots=n_slots or 0, masked_compute=masked_compute)
    if form == "masked":
        cfg = MoEConfig.from_dense(dense_cfg, **fields)
        if cfg.gathers:  # the gathered MLP's static size: every expert must keep exactly k neurons
            check_expert_width(masks_NEF, width)
        return build_model(cfg, masked_pure(dense_pure, masks_NEF), MoELlama)
    probe = MoEConfig.from_dense(dense_cfg, **fields)  # validates n_slots and kernel before any slicing
    pure, shared = sliced_pure(dense_pure, masks_NEF, split_shared, probe.stacked_slots, probe.n_slots)
    return build_model(MoEConfig.from_dense(dense_cfg, **fields, shared_widths=shared), pure, MoELlama)


@dataclasses.dataclass(frozen=True)
class Refactoring:
    """What ``refactor`` produced: the MoE folder, the expert neuron sets, the pruned-dense baseline's neurons
    and the report saved beside the weights (``expert_report`` plus the profiled model's name)."""

    folder: Path
    masks_NEF: np.ndarray
    pruned_N1F: np.ndarray
    report: dict


def refactor(lm, stats, folder, keep_ratio: float = 0.5, source: str | None = None) -> Refactoring:
    """Steps 1-3 from a dense ``LM`` and its ``ProfileStats``, written atomically as a Read-ME MoE folder
    (``readme_jax.moe_io``) that ``readme_jax.load`` opens and ``readme-jax train`` tunes. ``source``: the
    dense model's ``readme_jax.load`` spec, recorded in the folder."""
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
                   keep_ratio, lm.tokenizer, report=report, pruned_N1F=pruned_N1F, source=source)
    return Refactoring(Path(out), masks_NEF, pruned_N1F, report)
