"""The Read-ME MoE checkpoint folder: an HF Llama folder plus the Read-ME fields.

* ``config.json``: the dense HF config plus a ``readme_moe`` object (experts, expert width, keep
  ratio, domain names in expert order, and ``source``: the dense model the experts came from).
* ``model.safetensors``: the dense tensors under HF names (the masked form is canonical: shared
  neurons stored once) plus ``readme_moe.layers.{n}.expert_mask`` uint8 [E, F] per layer.
* tokenizer files, and ``refactor_report.json`` (permanent sizes, overlaps).
* once trained, the pre-gating router: tensors ``readme_router.<path>`` (its NNX state paths joined by
  dots) in the same safetensors file and its ``RouterConfig`` under ``readme_moe.router``.

Written into a temporary sibling folder and renamed into place, so a partial folder never looks complete.
"""

import json
from pathlib import Path

import numpy as np

from readme_jax import atomic
from readme_jax.errors import ReadmeJaxError
from readme_jax.trees import flatten_dict

MOE_KEY = "readme_moe"
ROUTER_PREFIX = "readme_router."


def mask_name(n: int) -> str:
    return f"{MOE_KEY}.layers.{n}.expert_mask"


def pruned_name(n: int) -> str:
    return f"{MOE_KEY}.layers.{n}.pruned_mask"


def is_moe_folder(folder: Path) -> bool:
    try:
        return MOE_KEY in json.loads((Path(folder) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False


def save_moe(folder: Path, dense_cfg, dense_pure: dict, masks_NEF: np.ndarray, domains, keep_ratio: float,
             tokenizer, report: dict | None = None, pruned_N1F: np.ndarray | None = None, router=None,
             source: str | None = None):
    """Write a Read-ME folder; ``router`` is None or (RouterConfig, pure state dict of numpy arrays).

    ``source``: the dense model the experts were carved from (a ``readme_jax.load`` spec), kept so that
    benchmarks and evaluations can compare the MoE with its parent.
    """
    import dataclasses

    from readme_jax.hf_import import save_hf
    from readme_jax.weights import pure_to_hf

    tensors = pure_to_hf(dense_cfg, dense_pure)
    for n in range(masks_NEF.shape[0]):
        tensors[mask_name(n)] = masks_NEF[n].astype(np.uint8)
        if pruned_N1F is not None:  # the pruned-dense baseline's neurons, kept for evaluation
            tensors[pruned_name(n)] = pruned_N1F[n].astype(np.uint8)
    extra = {MOE_KEY: {"n_experts": int(masks_NEF.shape[1]), "expert_width": int(masks_NEF[0, 0].sum()),
                       "keep_ratio": keep_ratio, "domains": list(domains), "format": 1}}
    if source is not None:
        extra[MOE_KEY]["source"] = str(source)
    if router is not None:
        router_cfg, router_pure = router
        if router_cfg.n_experts != masks_NEF.shape[1]:
            raise ReadmeJaxError(f"router has {router_cfg.n_experts} experts, the masks {masks_NEF.shape[1]}")
        for path, array in flatten_dict(router_pure).items():
            tensors[ROUTER_PREFIX + path] = np.asarray(array)
        extra[MOE_KEY]["router"] = dataclasses.asdict(router_cfg)
    folder = save_hf(folder, dense_cfg, tensors, tokenizer=tokenizer, extra_config=extra)
    if report is not None:
        atomic.write_text(folder / "refactor_report.json", json.dumps(report, indent=2))
    return folder


def _read_router(folder: Path, fields: dict, get, has):
    """(RouterConfig, pure dict) from the folder, or None when it holds no trained router."""
    from flax import nnx

    from readme_jax.router import Router, RouterConfig

    if "router" not in fields:
        return None
    try:
        cfg = RouterConfig(**fields["router"])
    except TypeError as exc:
        raise ReadmeJaxError(f"{folder}/config.json: malformed '{MOE_KEY}.router' fields ({exc})") from None
    abstract = nnx.eval_shape(lambda: Router(cfg, rngs=nnx.Rngs(0)))
    pure = nnx.to_pure_dict(nnx.state(abstract))

    def fill(tree, prefix=""):
        out = {}
        for key, leaf in tree.items():
            path = f"{prefix}{key}"
            if isinstance(leaf, dict):
                out[key] = fill(leaf, path + ".")
                continue
            name = ROUTER_PREFIX + path
            if not has(name):
                raise ReadmeJaxError(f"{folder}: missing router tensor {name!r}")
            array = np.asarray(get(name))
            if array.shape != tuple(leaf.shape):
                raise ReadmeJaxError(f"{folder}: router tensor {name!r} has shape {array.shape}, "
                                     f"the config says {tuple(leaf.shape)}")
            out[key] = array.astype(cfg.dtype)
        return out

    return cfg, fill(pure)


def read_moe_folder(folder: Path, dtype: str = "float32", weights: bool = True) -> dict:
    """Everything in a Read-ME folder: dense cfg + pure weights, expert masks, pruned masks, fields, tokenizer.

    ``weights=False`` reads the dense weights' embedding only (``dense_pure = {"embed_VD": ...}``): for callers
    that load the rest sharded (``readme_jax.sharded_load``)."""
    from readme_jax import tokenizer as tok
    from readme_jax.hf_import import load_hf
    from readme_jax.weights import hf_to_pure

    folder = Path(folder)
    fields = json.loads((folder / "config.json").read_text())[MOE_KEY]
    cfg, get, has = load_hf(folder, dtype=dtype)
    try:
        E, width = int(fields["n_experts"]), int(fields["expert_width"])
        domains = tuple(fields.get("domains", ()))
        keep = float(fields["keep_ratio"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ReadmeJaxError(f"{folder}/config.json: malformed '{MOE_KEY}' fields ({exc})") from None

    def masks(name_fn, rows, what):
        out = []
        for n in range(cfg.n_layers):
            if not has(name_fn(n)):
                raise ReadmeJaxError(f"{folder}: missing tensor {name_fn(n)!r} (not a complete Read-ME MoE folder)")
            m = np.asarray(get(name_fn(n))) > 0.5
            if m.shape != (rows, cfg.d_ff) or not (m.sum(-1) == width).all():
                raise ReadmeJaxError(f"{folder}: {what} {name_fn(n)!r} has shape {m.shape} and sizes "
                                     f"{m.sum(-1).tolist()}, expected ({rows}, {cfg.d_ff}) with {width} neurons each")
            out.append(m)
        return np.stack(out)

    if weights:
        dense_pure = hf_to_pure(cfg, get, has)
    else:
        dense_pure = {"embed_VD": np.asarray(get("model.embed_tokens.weight"))}
    return {"cfg": cfg, "dense_pure": dense_pure, "masks_NEF": masks(mask_name, E, "expert mask"),
            "router": _read_router(folder, fields, get, has),
            "pruned_N1F": masks(pruned_name, 1, "pruned mask") if has(pruned_name(0)) else None,
            "domains": domains, "keep_ratio": keep, "source": fields.get("source"),
            "tokenizer": tok.from_folder(folder, eos_ids=cfg.eos_ids, bos_id=cfg.bos_id)}


def build_router(router_cfg, router_pure):
    """A Router module from its config and pure state dict."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from readme_jax.router import Router

    router = nnx.eval_shape(lambda: Router(router_cfg, rngs=nnx.Rngs(0)))
    state = nnx.state(router)
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda a: jnp.asarray(a, router_cfg.dtype), router_pure))
    nnx.update(router, state)
    return router


def load_moe(folder: Path, dtype: str = "float32", form: str = "sliced", kernel: str | None = None,
             split_shared: bool = True):
    """(MoE model, tokenizer, masks_NEF, router or None) from a Read-ME folder."""
    from readme_jax.refactor import build_moe

    parts = read_moe_folder(folder, dtype)
    model = build_moe(parts["cfg"], parts["dense_pure"], parts["masks_NEF"], form=form, domains=parts["domains"],
                      keep_ratio=parts["keep_ratio"], kernel=kernel, split_shared=split_shared)
    router = None if parts["router"] is None else build_router(*parts["router"])
    return model, parts["tokenizer"], parts["masks_NEF"], router
