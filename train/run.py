"""One training run end to end: read the refactored MoE folder, train, export the trained folder, plot.

Inputs: ``<workdir>/moe`` (from ``readme-jax refactor``). Outputs under ``<workdir>/train/``: ``ckpt/``
(orbax steps), ``metrics.jsonl``, ``loss.png``, ``summary.json``; and ``<workdir>/moe_trained`` (a Read-ME
folder with the tuned backbone and the trained router, which ``readme_jax.load`` opens).
"""

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from readme_jax import atomic
from readme_jax.errors import ReadmeJaxError
from train.config import TrainConfig, resolve_mlp_compute
from train.loop import Setup, Trainer


def prepare(cfg: TrainConfig, workdir: Path, moe_folder: Path | None = None, progress: bool = True,
            domains=None, baseline: str | None = None):
    """(Setup, parts of the MoE folder, router config), every input checked before any work starts.

    ``domains``: a DomainSet to read training text from (default: the registry's domains named by the folder).
    ``baseline="pruned"``: the folder's pruned-dense model instead (one "expert": the pruned neurons), under
    the same data, steps and schedule; see ``train``.
    """
    from jax.sharding import NamedSharding

    from readme_jax.corpus_blocks import select_domains
    from readme_jax.moe import NeuronMask
    from readme_jax.moe_io import is_moe_folder, read_moe_folder
    from readme_jax.refactor import build_moe
    from readme_jax.router import RouterConfig, init_router
    from readme_jax.sharded_load import load_hf_sharded
    from train import sharding
    from train.data import load_stream

    folder = Path(moe_folder) if moe_folder else workdir / "moe"
    if not is_moe_folder(folder):
        raise ReadmeJaxError(f"{folder}: no Read-ME MoE folder; run `readme-jax refactor` first")
    from train.loop import make_train_mesh

    mesh = make_train_mesh(cfg)
    sharding.check_batch(cfg.micro_batch, mesh)
    parts = read_moe_folder(folder, weights=False)
    if baseline == "pruned":
        if parts["pruned_N1F"] is None:
            raise ReadmeJaxError(f"{folder}: no pruned-dense masks (written by `readme-jax refactor`)")
        parts = {**parts, "masks_NEF": parts["pruned_N1F"], "experts": ("pruned",), "router": None}
    elif baseline is not None:
        raise ReadmeJaxError(f"baseline={baseline!r}: the only baseline is 'pruned'")
    dense_cfg, masks_NEF = parts["cfg"], parts["masks_NEF"]
    if cfg.seq_len > dense_cfg.max_seq_len:
        raise ReadmeJaxError(f"seq_len={cfg.seq_len} exceeds the model's max_seq_len={dense_cfg.max_seq_len}")
    E = masks_NEF.shape[1]
    # Each process reads only its devices' blocks of each weight, straight into the training shardings: no
    # host holds the whole backbone (the masked MoE's parameters are the dense model's, by name).
    _, dense_params = load_hf_sharded(folder, lambda path, shape: NamedSharding(
        mesh, sharding.logical_spec(sharding.PARAM_AXES[path[-1]], shape, mesh)))
    model = build_moe(dense_cfg, dense_params, masks_NEF, "masked", parts.get("experts", parts["domains"]),
                      parts["keep_ratio"], masked_compute=resolve_mlp_compute(cfg.mlp_compute, masks_NEF))
    backbone_gd, params, masks = nnx.split(model, nnx.Param, NeuronMask)
    overrides = {"mlp": cfg.router_mlp, "max_seq_len": max(cfg.seq_len, dense_cfg.max_seq_len)}
    if cfg.router_d_model:
        overrides["d_model"], overrides["d_ff"] = cfg.router_d_model, cfg.router_d_model
    if cfg.router_rope_theta:
        overrides["rope_theta"] = cfg.router_rope_theta
    router_cfg = RouterConfig.for_backbone(dense_cfg, E, **overrides)
    if parts["router"] is not None:  # continue from a trained router (e.g. training a trained folder again)
        from readme_jax.moe_io import build_router

        router_cfg, router = parts["router"][0], build_router(*parts["router"])
    else:
        router = init_router(router_cfg, parts["dense_pure"]["embed_VD"], rngs=nnx.Rngs(cfg.seed))
    router_gd, router_params = nnx.split(router, nnx.Param)
    if domains is None:
        domains = select_domains(parts["domains"])
    else:
        domains = domains.select(list(parts["domains"]))
    chat = None
    if cfg.chat_every:
        from train.chat_data import load_or_build

        chat = load_or_build(workdir, folder, parts, domains, cfg.seq_len, cfg.chat_per_domain,
                             cfg.chat_answer_tokens, progress)
    stream = load_stream(parts["tokenizer"], domains, cfg.seq_len, cfg.blocks_per_domain, cfg.doc_chars, cfg.seed,
                         progress, chat, cfg.chat_every)
    fingerprint = {"model": {"d_model": dense_cfg.d_model, "n_layers": dense_cfg.n_layers, "d_ff": dense_cfg.d_ff,
                             "vocab_size": dense_cfg.vocab_size, "n_experts": E,
                             "expert_width": int(masks_NEF[0, 0].sum()), "domains": list(parts["domains"])},
                   "train": cfg.fingerprint(), "router": dataclasses.asdict(router_cfg),
                   "data_blocks": len(stream)}
    if baseline:
        fingerprint["baseline"] = baseline
    setup = Setup(cfg, backbone_gd, params, masks, router_gd, router_params, masks_NEF, stream, fingerprint,
                  workdir / ("train_pruned" if baseline else "train"), train_router=baseline is None)
    return setup, parts, router_cfg


def train(cfg: TrainConfig, workdir, moe_folder=None, *, resume: bool = True, fresh: bool = False,
          stop_after: int | None = None, export: bool = True, progress: bool = True, domains=None,
          baseline: str | None = None) -> dict:
    """Run (or resume) training; returns the summary dict (also written to ``train/summary.json``).

    ``baseline="pruned"``: the fair baseline of the MoE. The pruned-dense model (the folder's pruned neurons,
    as many active parameters as one expert path) is tuned with exactly the expert stages' budget: the same
    rounds, steps, batches, blocks of text, learning-rate schedule and trained parameters. The router stages
    are skipped (one expert: nothing to route) but step over the blocks they would have read. Work in
    ``<workdir>/train_pruned``, export to ``<workdir>/pruned_tuned``, which ``readme-jax eval`` reports as
    ``pruned_tuned``.
    """
    from readme_jax.moe_io import save_moe
    from train import sharding

    workdir = Path(workdir)
    setup, parts, router_cfg = prepare(cfg, workdir, moe_folder, progress, domains, baseline)
    if fresh and sharding.is_primary() and setup.out_dir.exists():
        shutil.rmtree(setup.out_dir)
    sharding.barrier("readme-jax: fresh work folder")  # no process may see the old checkpoints
    if progress and sharding.is_primary() and baseline:
        print(f"baseline {baseline}: the pruned-dense model, {cfg.rounds} rounds x {cfg.expert_steps} expert steps "
              f"on the blocks the MoE's expert stages read; expert stage trains {cfg.expert_params}")
    elif progress and sharding.is_primary():
        print(f"router: {router_cfg.num_params():,} params (d_model={router_cfg.d_model}, mlp={router_cfg.mlp}); "
              f"{cfg.rounds} rounds x ({cfg.router_steps} router + {cfg.expert_steps} expert steps), "
              f"distill={cfg.distill}, teacher={cfg.teacher}, expert stage trains {cfg.expert_params}")
    trainer = Trainer(setup, progress=progress)
    try:
        result = trainer.run(resume=resume and not fresh, stop_after=stop_after)
    finally:
        trainer.ckpt.close()
    if "stopped_at" in result:
        return result
    if export:  # a collective (parameters sharded over other processes are gathered), so before the primary check
        dense_pure = sharding.to_host(nnx.to_pure_dict(trainer.params))
        router_pure = sharding.to_host(nnx.to_pure_dict(trainer.router_params))
    if not sharding.is_primary():  # process 0 writes the metrics, the export and the plot
        return {**result, "process_index": jax.process_index()}
    summary = {"preset": cfg.preset, "config": dataclasses.asdict(cfg), "baseline": baseline, **result,
               "router_params": router_cfg.num_params(), "training_blocks": len(setup.stream)}
    summary.update(metric_summary(setup.out_dir / "metrics.jsonl"))
    if export:
        out = save_moe(workdir / ("pruned_tuned" if baseline else "moe_trained"), parts["cfg"], dense_pure,
                       parts["masks_NEF"], parts.get("experts", parts["domains"]), parts["keep_ratio"],
                       parts["tokenizer"], report={"training": summary}, pruned_N1F=parts["pruned_N1F"],
                       router=None if baseline else (router_cfg, router_pure), source=parts.get("source"))
        summary["exported"] = str(out)
    from train.plots import plot_metrics

    summary["plot"] = str(plot_metrics(setup.out_dir / "metrics.jsonl", setup.out_dir / "loss.png"))
    _write_json(setup.out_dir / "summary.json", summary)
    return summary


def metric_summary(path: Path) -> dict:
    """Last router accuracy and the first/last loss of each stage, from the metrics log."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = {}
    for stage in ("router", "expert"):
        sel = [r for r in rows if r["stage"] == stage]
        if sel:
            out[f"{stage}_loss_first"], out[f"{stage}_loss_last"] = sel[0]["loss"], sel[-1]["loss"]
    accs = [r["router_acc"] for r in rows if r["stage"] == "router"]
    if accs:
        out["router_acc_last"] = float(np.mean(accs[-3:]))  # the last few batches: one batch is noisy
    return out


def _write_json(path: Path, obj):
    atomic.write_text(path, json.dumps(obj, indent=2, default=str))
