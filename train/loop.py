"""Read-ME's alternating tuning (paper §4.2): rounds of a router stage, then an expert stage.

Round r: the router learns by distillation for ``router_steps`` (backbone frozen), then the backbone learns
the LM loss under the frozen router's routes for ``expert_steps``. Within a stage the learning rate warms up
linearly, then follows a cosine from ``lr * round_decay**r`` to 0; every stage starts a fresh AdamW state (the reference code runs each
stage as its own job). The run is one sequence of global steps; a checkpoint stores everything needed to
continue it exactly: parameters, optimizer state, position in the schedule and data position. Training has
no other randomness: the data order is the stream's (seed, position), and the seed is in the fingerprint.
"""

import dataclasses
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from readme_jax import atomic
from readme_jax.errors import ReadmeJaxError
from train import programs, sharding, steps
from train.checkpoint import Checkpointer
from train.config import TrainConfig

STAGES = ("router", "expert")
_STEP_CACHE: dict = {}


def stage_lr(cfg: TrainConfig, stage: str, rnd: int, step: int) -> float:
    """Linear warm-up over the first ``warmup_frac`` of the stage, then cosine decay to 0 at its end, from a
    peak that decays exponentially across rounds. The warm-up matters from round 1 on: each stage starts a
    fresh AdamW state, whose first updates are about lr * sign(grad) for every weight, and at full learning
    rate that jolt undoes much of the previous round's router (measured: agreement fell from 0.65 to 0.4).
    """
    peak = (cfg.router_lr if stage == "router" else cfg.expert_lr) * cfg.round_decay ** rnd
    n = cfg.router_steps if stage == "router" else cfg.expert_steps
    warm = int(round(cfg.warmup_frac * n))
    if step < warm:
        return peak * (step + 1) / (warm + 1)
    return peak * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(n - warm, 1)))


def make_train_mesh(cfg: TrainConfig):
    """The run's mesh over all devices, or over the first ``cfg.devices`` of them."""
    devices = jax.devices()
    if cfg.devices > len(devices):
        raise ReadmeJaxError(f"devices={cfg.devices} but only {len(devices)} are visible")
    procs = jax.process_count()
    where = f"{procs} processes x {jax.local_device_count()} local devices = {len(devices)} devices"
    if procs > 1 and cfg.devices not in (0, len(devices)):
        # A subset would leave some processes without a shard of anything (or with unequal shares).
        raise ReadmeJaxError(f"devices={cfg.devices}: a multi-process job ({where}) must put all its devices in "
                             "the mesh; use devices=0")
    try:
        return sharding.make_mesh(cfg.mesh, devices[:cfg.devices] if cfg.devices else None)
    except ReadmeJaxError as e:
        raise ReadmeJaxError(f"{e} ({where})" if procs > 1 else str(e)) from None


def schedule(cfg: TrainConfig) -> list[tuple[int, str, int]]:
    """(round, stage, steps) in order; stages with zero steps are skipped."""
    out = []
    for r in range(cfg.rounds):
        for stage in STAGES:
            n = cfg.router_steps if stage == "router" else cfg.expert_steps
            if n:
                out.append((r, stage, n))
    return out


@dataclasses.dataclass
class Setup:
    """Everything a run is built from (see ``train.run.prepare``)."""

    cfg: TrainConfig
    backbone_gd: object
    params: nnx.State  # the MoE backbone's parameters (masked-dense form)
    masks: nnx.State  # its fixed neuron masks
    router_gd: object
    router_params: nnx.State
    masks_NEF: np.ndarray
    stream: object  # train.data.BlockStream
    fingerprint: dict
    out_dir: Path
    # False: the router stages only move the data position past the blocks they would have read, so the
    # expert stages see exactly the blocks of a full run (the pruned-dense baseline, ``train --baseline``).
    train_router: bool = True


def _flat(tree) -> dict:
    return {str(i): x for i, x in enumerate(jax.tree.leaves(tree))}


def _unflat(like, flat: dict):
    leaves = jax.tree.leaves(like)
    return jax.tree.unflatten(jax.tree.structure(like), [flat[str(i)] for i in range(len(leaves))])


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                        tree)


class Trainer:
    def __init__(self, setup: Setup, progress: bool = True):
        steps.check_masked_backbone(setup.params)
        self.s, cfg = setup, setup.cfg
        self.cfg, self.progress = cfg, progress
        self.mesh = make_train_mesh(cfg)
        sharding.check_batch(cfg.micro_batch, self.mesh)
        self.rep = sharding.replicated(self.mesh)
        self.batch_sh, self.scores_sh = programs.batch_shardings(self.mesh)
        self.params = sharding.shard_state(setup.params, self.mesh)
        self.masks = sharding.shard_state(setup.masks, self.mesh)
        self.ones_masks = jax.tree.map(jnp.ones_like, self.masks)  # all neurons: the backbone run dense
        self.router_params = sharding.shard_state(setup.router_params, self.mesh)
        # The original dense weights (a copy: expert steps donate the live parameters); with
        # teacher="previous" each router stage replaces it by the current backbone (see _start_stage).
        self.teacher = jax.tree.map(jnp.copy, self.params)
        masks_NEF = np.asarray(setup.masks_NEF, bool)
        permanent_NF = masks_NEF.all(axis=1)
        self.masks_NEF = jax.device_put(masks_NEF, self.rep)
        self.permanent_NF = jax.device_put(permanent_NF, self.rep)
        k = int(masks_NEF[0, 0].sum())
        self.spec = steps.StepSpec(cfg.distill, cfg.kl_tau, cfg.kl_direction, k, masks_NEF.shape[0],
                                   int(k - permanent_NF[0].sum()), cfg.compute_dtype, cfg.remat, cfg.expert_loss,
                                   cfg.kd_weight)
        self._targets: dict[int, tuple] = {}  # block index -> teacher (scores_ZLE, label_L), while the teacher holds
        self.ckpt = Checkpointer(setup.out_dir / "ckpt", save_every=cfg.save_every, max_to_keep=cfg.max_to_keep)
        self.metrics_path = setup.out_dir / "metrics.jsonl"
        self.primary = sharding.is_primary()  # multi-process: only process 0 writes the metrics log
        self._steps = {}

    # -- compiled steps, one per stage (and per trainable split) --------------------------------------------
    def _cached(self, stage, build):
        # Compiled steps are shared by Trainers with the same static facts (tests, resumed runs in one process).
        key = (stage, self.spec, self.s.router_gd, self.s.backbone_gd, self.cfg.weight_decay, self.cfg.grad_clip,
               self.cfg.expert_params, self.mesh)
        if key not in _STEP_CACHE:
            _STEP_CACHE[key] = build()
        return _STEP_CACHE[key]

    def _router_step(self):
        if "router" not in self._steps:
            self._steps["router"] = self._cached("router", self._build_router_step)
        return self._steps["router"]

    def _build_router_step(self):
        return programs.router_step(self.cfg, self.spec, self.s.router_gd, self.router_params, self.mesh)[:3]

    def _teacher_fn(self):
        if "teacher" not in self._steps:
            self._steps["teacher"] = self._cached("teacher", lambda: steps.make_teacher_fn(
                self.spec, self.s.backbone_gd, self.rep))
        return self._steps["teacher"]

    def _router_targets(self, tokens_BL, idx_B):
        """(scores [Z, B, L, E], labels [B, L]) for the batch; each block's teacher pass runs once per teacher.

        Blocks go through the teacher one at a time, so a block's targets never depend on which other blocks
        share its batch: a resumed run (empty cache, different batch mates) computes identical targets.
        """
        fn = self._teacher_fn()
        for row, i in enumerate(idx_B.tolist()):
            if i not in self._targets:
                tokens_1L = sharding.host_to_global(np.asarray(tokens_BL[row:row + 1], np.int32), self.rep)
                scores, label = fn(self.teacher, self.ones_masks, tokens_1L,
                                   self.masks_NEF, self.permanent_NF)
                self._targets[i] = (np.asarray(scores[:, 0]), np.asarray(label[0]))
        scores_ZBLE = np.stack([self._targets[i][0] for i in idx_B.tolist()], axis=1)
        return scores_ZBLE, np.stack([self._targets[i][1] for i in idx_B.tolist()])

    def _split(self, params):
        return programs.split_trainable(self.cfg, params)

    def _expert_step(self):
        if "expert" not in self._steps:
            self._steps["expert"] = self._cached("expert", self._build_expert_step)
        return self._steps["expert"]

    def _build_expert_step(self):
        return programs.expert_step(self.cfg, self.spec, self.s.router_gd, self.s.backbone_gd, self.params,
                                    self.masks, self.router_params, self.mesh)[:3]

    def _fresh_opt(self, stage):
        if stage == "router":
            return self._router_step()[2](self.router_params)
        return self._expert_step()[2](self._split(self.params)[0])

    # -- checkpoint state ------------------------------------------------------------------------------------
    def _state(self, opt, stage):
        state = {"params": _flat(self.params), "router": _flat(self.router_params), "opt": _flat(opt)}
        # teacher=previous: this round's teacher is not the original weights, and the expert stage reads it
        # too when its loss distils from it (expert_loss kd or mix)
        if self.cfg.teacher == "previous" and (stage == "router" or self.spec.uses_teacher):
            state["teacher"] = _flat(self.teacher)
        return state

    def _latest_step(self):
        """The newest complete checkpoint, as process 0 sees it: every process must resume the same step."""
        step = self.ckpt.latest_step()
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            step = int(multihost_utils.broadcast_one_to_all(np.int64(-1 if step is None else step)))
            step = None if step < 0 else step
        return step

    def _restore(self, step):
        meta = self.ckpt.read_meta(step)
        diff = _fingerprint_diff(meta.get("fingerprint", {}), self.s.fingerprint)
        if diff:
            raise ReadmeJaxError(f"checkpoint {self.ckpt_dir()}/{step} is from another model or config: "
                                 + "; ".join(diff) + " (use a new --workdir or --fresh)")
        opt = self._fresh_opt(meta["stage"])
        like = self._state(opt, meta["stage"])
        state, meta = self.ckpt.restore(_abstract(like), step)
        self.params = _unflat(self.params, state["params"])
        self.router_params = _unflat(self.router_params, state["router"])
        self.teacher = _unflat(self.params, state["teacher"]) if "teacher" in state else self.teacher
        return _unflat(opt, state["opt"]), meta

    def ckpt_dir(self) -> Path:
        return self.s.out_dir / "ckpt"

    # -- the run ---------------------------------------------------------------------------------------------
    def run(self, resume: bool = True, stop_after: int | None = None) -> dict:
        """Train; ``stop_after`` global steps ends the run early with a checkpoint (for resume tests)."""
        cfg, plan = self.cfg, schedule(self.cfg)
        total = sum(n for _, stage, n in plan if stage == "expert" or self.s.train_router)
        g, data_pos, opt, where = 0, 0, None, (0, 0)  # where = (index into plan, step within stage)
        latest = self._latest_step() if resume else None
        if latest is not None:
            opt, meta = self._restore(latest)
            g, data_pos, where = meta["global_step"], meta["data_pos"], (meta["plan_index"], meta["step"])
            if self.primary:
                _truncate_metrics(self.metrics_path, g)
                print(f"resumed from {self.ckpt_dir()}/{g}: round {plan[where[0]][0]}, {plan[where[0]][1]} stage, "
                      f"step {where[1]}")
        elif self.primary and self.metrics_path.exists():
            self.metrics_path.unlink()
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=total, initial=g, desc="training", unit="step", disable=not (self.progress and self.primary))
        throughput = {s: [] for s in STAGES}
        try:
            for pi in range(where[0], len(plan)):
                rnd, stage, n_steps = plan[pi]
                first = where[1] if pi == where[0] else 0
                if stage == "router" and not self.s.train_router:
                    data_pos += cfg.router_batch * (n_steps - first)
                    continue
                if first == 0:
                    opt = self._start_stage(stage)
                batch = cfg.router_batch if stage == "router" else cfg.expert_batch
                for i in range(first, n_steps):
                    if stop_after is not None and g >= stop_after:
                        self._save(g, opt, stage, pi, i, data_pos, force=True)
                        return {"stopped_at": g}
                    tokens, idx, data_pos = self.s.stream.take(data_pos, batch)
                    lr = stage_lr(cfg, stage, rnd, i)
                    t0 = time.perf_counter()
                    opt, metrics = self._step(stage, opt, tokens, idx, lr)
                    dt = time.perf_counter() - t0
                    g += 1
                    tok_s = tokens.size / dt
                    if i > 0:  # the first step of a stage includes compilation
                        throughput[stage].append((tokens.size, dt))
                    row = {"global_step": g, "round": rnd, "stage": stage, "step": i + 1, "lr": lr,
                           "tokens_per_s": tok_s, **metrics}
                    if self.primary:
                        with self.metrics_path.open("a") as f:
                            f.write(json.dumps(row) + "\n")
                    bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items() if k in ("loss", "router_acc")}
                                    | {"stage": f"r{rnd}:{stage}"})
                    bar.update(1)
                    self._save(g, opt, stage, pi, i + 1, data_pos, force=i + 1 == n_steps)
        finally:
            bar.close()
            self.ckpt.wait()
        # Stage throughput = tokens / wall time over its steps (router: teacher passes included, which run
        # once per block while the teacher is fixed, so later epochs are cheaper).
        return {"global_steps": g, "tokens_per_s": {
            s: (sum(n for n, _ in v) / sum(t for _, t in v)) if v else None for s, v in throughput.items()}}

    def _start_stage(self, stage):
        if stage == "router" and self.cfg.teacher == "previous":
            self.teacher = jax.tree.map(jnp.copy, self.params)  # this round's backbone, run dense
            self._targets.clear()
        return self._fresh_opt(stage)

    def _step(self, stage, opt, tokens_BL, idx_B, lr):
        A, L = len(tokens_BL) // self.cfg.micro_batch, tokens_BL.shape[-1]
        put = sharding.host_to_global  # every process holds the same batch (the stream is deterministic)
        tokens_ABL = put(np.asarray(tokens_BL, np.int32).reshape(A, -1, L), self.batch_sh)
        valid_ABL = put(self.s.stream.valid(idx_B).reshape(A, -1, L), self.batch_sh)  # a chat row's padding: False
        lr = put(np.float32(lr), self.rep)
        if stage == "router":
            _, fn, _ = self._router_step()
            scores_ZBLE, label_BL = self._router_targets(tokens_BL, idx_B)
            Z, E = scores_ZBLE.shape[0], scores_ZBLE.shape[-1]
            scores_AZBLE = scores_ZBLE.reshape(Z, A, -1, L, E).transpose(1, 0, 2, 3, 4)
            scores_AZBLE = put(scores_AZBLE, self.scores_sh)
            label_ABL = put(label_BL.reshape(A, -1, L), self.batch_sh)
            self.router_params, opt, m = fn(self.router_params, opt, tokens_ABL, valid_ABL, scores_AZBLE, label_ABL,
                                            lr)
            return opt, {"loss": float(m["loss"]), "router_acc": float(m["router_acc"]),
                         "grad_norm": float(m["grad_norm"])}
        _, fn, _ = self._expert_step()
        trainable, frozen = self._split(self.params)
        teacher = (self.teacher, self.ones_masks) if self.spec.uses_teacher else ()
        trainable, opt, m = fn(trainable, opt, frozen, self.masks, self.router_params, tokens_ABL, valid_ABL, lr,
                               *teacher)
        self.params = nnx.merge_state(trainable, frozen)
        usage = np.asarray(m["expert_usage"], np.float64)
        return opt, {"loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]),
                     "expert_usage": (usage / max(usage.sum(), 1)).round(4).tolist()}

    def _save(self, g, opt, stage, plan_index, step, data_pos, force=False):
        if not (force or self.ckpt.should_save(g)):
            return
        meta = {"global_step": g, "plan_index": plan_index, "stage": stage, "step": step, "data_pos": data_pos,
                "fingerprint": self.s.fingerprint}
        self.ckpt.save(g, self._state(opt, stage), meta, force=True)


def _fingerprint_diff(saved: dict, expected: dict) -> list[str]:
    from train.checkpoint import fingerprint_diff

    return fingerprint_diff(saved, json.loads(json.dumps(expected)))


def _truncate_metrics(path: Path, global_step: int):
    """Drop metric lines past the checkpoint we resume from, so the log reads like one uninterrupted run."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["global_step"] <= global_step]
    atomic.write_text(path, "".join(line + "\n" for line in keep))
