"""``readme-jax plan``: does a preset's training fit its devices? Compiled, not guessed.

The backbone (Llama-2-7B's shapes for the ``paper`` preset) and the router are built abstractly
(``nnx.eval_shape``: no weight is ever allocated), then the run's own programs (``train.programs``: the
router step, the expert step and the teacher's forward) are lowered and compiled for a mesh of ``devices``
devices; fake CPU devices are enough to compile. Per device, the plan adds:

* resident state, from the shardings: the backbone's fp32 parameters, the teacher's copy of them (the trainer
  keeps the original weights for the router stage's targets), the neuron masks, the router's parameters, and
  the stage's AdamW moments;
* what each compiled program needs beyond its arguments, from ``compiled.memory_analysis()``: temporaries
  (activations kept for the backward pass, gradients, gathered FSDP shards) plus outputs not written in place
  of a donated argument.

A stage's peak is its resident state plus the larger of its programs' extra bytes. XLA's CPU compiler
schedules and fuses differently from the GPU one, so the numbers are an estimate of the GPU's.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from readme_jax.config import LlamaConfig
from readme_jax.errors import ReadmeJaxError
from train import programs, sharding, steps
from train.config import TrainConfig

# Llama-2-7B (config.json of meta-llama/Llama-2-7b-hf): the backbone of the paper (§4, 8 x A100-80GB).
LLAMA2_7B = LlamaConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, d_ff=11008,
                        rope_theta=10000.0, rms_eps=1e-5, max_seq_len=4096, bos_id=1, eos_ids=(2,),
                        name="llama-2-7b")
PAPER_EXPERTS = 8  # the paper's MoE: 8 experts, each half of every layer's MLP neurons
DEFAULT_MESHES = ("data=8", "fsdp=8", "fsdp=4,tensor=2", "data=2,fsdp=4", "fsdp=2,tensor=4")
GB = 1e9


@dataclasses.dataclass(frozen=True)
class PlanRow:
    """Per-device bytes of one (mesh, remat) configuration."""

    mesh: str
    remat: bool
    params: int  # backbone parameters (fp32 master weights)
    teacher: int  # the teacher's copy of the backbone
    other: int  # neuron masks (and their all-ones copy that runs the teacher dense), router parameters
    opt_router: int  # AdamW moments of the router stage
    opt_expert: int  # AdamW moments of the expert stage
    router_step: int  # extra bytes of the compiled router step (temporaries + non-donated outputs)
    teacher_fwd: int  # extra bytes of the compiled teacher forward (one block of seq_len tokens)
    expert_step: int  # extra bytes of the compiled expert step

    @property
    def router_peak(self) -> int:
        return self.params + self.teacher + self.other + self.opt_router + max(self.router_step, self.teacher_fwd)

    @property
    def expert_peak(self) -> int:
        return self.params + self.teacher + self.other + self.opt_expert + self.expert_step

    @property
    def peak(self) -> int:
        return max(self.router_peak, self.expert_peak)


def device_bytes(tree, shardings) -> int:
    """Bytes one device holds of ``tree`` (arrays or ShapeDtypeStructs) placed with ``shardings``."""
    total = 0
    for leaf, sh in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
        shape = sh.shard_shape(tuple(leaf.shape)) if leaf.shape else ()
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


def extra_bytes(compiled) -> int:
    """What a compiled program allocates beyond its arguments: temporaries plus outputs not aliased to a
    donated input."""
    m = compiled.memory_analysis()
    if m is None:
        raise ReadmeJaxError("this jax backend reports no memory analysis for compiled programs")
    return int(m.temp_size_in_bytes + max(m.output_size_in_bytes - m.alias_size_in_bytes, 0))


def abstract_run(cfg: TrainConfig, dense_cfg: LlamaConfig, n_experts: int):
    """Graph definitions and abstract states of the masked MoE backbone and of its router (nothing allocated)."""
    from readme_jax.moe import MoEConfig, MoELlama, NeuronMask
    from readme_jax.router import Router, RouterConfig

    width = dense_cfg.d_ff // 2  # keep ratio 0.5, as refactoring does by default
    compute = cfg.mlp_compute if cfg.mlp_compute != "auto" else ("gather" if n_experts == 1 else "mask")
    moe_cfg = MoEConfig.from_dense(dense_cfg.replace(dtype="float32"), n_experts=n_experts, expert_width=width,
                                   form="masked", keep_ratio=0.5, masked_compute=compute)
    backbone_gd, params, masks = nnx.split(nnx.eval_shape(lambda: MoELlama(moe_cfg, rngs=nnx.Rngs(0))),
                                           nnx.Param, NeuronMask)
    overrides = {"mlp": cfg.router_mlp, "max_seq_len": max(cfg.seq_len, dense_cfg.max_seq_len)}
    if cfg.router_d_model:
        overrides["d_model"], overrides["d_ff"] = cfg.router_d_model, cfg.router_d_model
    router_cfg = RouterConfig.for_backbone(dense_cfg, n_experts, **overrides)
    router_gd, router_params = nnx.split(nnx.eval_shape(lambda: Router(router_cfg, rngs=nnx.Rngs(0))), nnx.Param)
    spec = steps.StepSpec(cfg.distill, cfg.kl_tau, cfg.kl_direction, width, dense_cfg.n_layers, width // 2,
                          cfg.compute_dtype, cfg.remat, cfg.expert_loss, cfg.kd_weight)
    return spec, backbone_gd, params, masks, router_gd, router_params


def _placed(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def plan_row(cfg: TrainConfig, dense_cfg: LlamaConfig, n_experts: int, mesh_text: str, devices) -> PlanRow:
    """Compile the run's programs for one mesh over ``devices`` and account its per-device bytes."""
    mesh = sharding.make_mesh(mesh_text, devices)
    sharding.check_batch(cfg.micro_batch, mesh)
    spec, backbone_gd, params, masks, router_gd, router_params = abstract_run(cfg, dense_cfg, n_experts)
    p_sh, m_sh = sharding.state_shardings(params, mesh), sharding.state_shardings(masks, mesh)
    r_sh = sharding.state_shardings(router_params, mesh)
    N, E, F, L = dense_cfg.n_layers, n_experts, dense_cfg.d_ff, cfg.seq_len
    rep = sharding.replicated(mesh)

    def batch(n_seqs, ins):
        A, b = n_seqs // cfg.micro_batch, cfg.micro_batch
        tokens = jax.ShapeDtypeStruct((A, b, L), jnp.int32, sharding=ins[0])
        return A, b, tokens, jax.ShapeDtypeStruct((A, b, L), jnp.bool_, sharding=ins[0])

    tx, fn, _, ins = programs.router_step(cfg, spec, router_gd, router_params, mesh)
    opt = jax.eval_shape(tx.init, router_params)
    opt_router = device_bytes(opt, ins[1])
    A, b, tokens, valid = batch(cfg.router_batch, ins[2:])
    scores = jax.ShapeDtypeStruct((A, 1 if cfg.distill == "paper" else N, b, L, E), jnp.float32, sharding=ins[4])
    lr = jax.ShapeDtypeStruct((), jnp.float32, sharding=rep)
    router_step = extra_bytes(fn.lower(_placed(router_params, r_sh), _placed(opt, ins[1]), tokens, valid, scores,
                                       tokens, lr).compile())

    teacher = steps.make_teacher_fn(spec, backbone_gd, rep)
    ones = _placed(masks, m_sh)
    teacher_fwd = extra_bytes(teacher.lower(
        _placed(params, p_sh), ones, jax.ShapeDtypeStruct((1, L), jnp.int32, sharding=rep),
        jax.ShapeDtypeStruct((N, E, F), jnp.bool_, sharding=rep),
        jax.ShapeDtypeStruct((N, F), jnp.bool_, sharding=rep)).compile())

    tx, fn, _, ins = programs.expert_step(cfg, spec, router_gd, backbone_gd, params, masks, router_params, mesh)
    trainable, frozen = programs.split_trainable(cfg, params)
    opt = jax.eval_shape(tx.init, trainable)
    opt_expert = device_bytes(opt, ins[1])
    _, _, tokens, valid = batch(cfg.expert_batch, ins[5:])
    teacher_args = (_placed(params, p_sh), ones) if spec.uses_teacher else ()
    expert_step = extra_bytes(fn.lower(_placed(trainable, ins[0]), _placed(opt, ins[1]), _placed(frozen, ins[2]),
                                       ones, _placed(router_params, r_sh), tokens, valid, lr,
                                       *teacher_args).compile())
    params_bytes = device_bytes(params, p_sh)
    return PlanRow(mesh_text, cfg.remat, params_bytes, params_bytes,
                   2 * device_bytes(masks, m_sh) + device_bytes(router_params, r_sh), opt_router, opt_expert,
                   router_step, teacher_fwd, expert_step)


def plan_devices(n: int):
    """``n`` devices to compile for: this machine's accelerators when it has enough, else fake CPU devices.

    Fake CPU devices must be requested before JAX starts its CPU backend, which is why ``plan`` runs first
    thing in its process.
    """
    try:
        jax.config.update("jax_num_cpu_devices", max(n, 1))
    except RuntimeError:
        pass  # the backend is already up; whatever it has must do
    cpus = jax.devices("cpu")
    if len(cpus) < n:
        raise ReadmeJaxError(f"plan needs {n} devices to compile for, this process has {len(cpus)} CPU devices "
                             f"(set XLA_FLAGS=--xla_force_host_platform_device_count={n} before starting it)")
    return cpus[:n]


HEADER = (f"{'mesh':<24}{'remat':>6}{'params':>8}{'teacher':>8}{'opt r/e':>12}{'router':>8}{'t.fwd':>8}"
          f"{'expert':>8}{'peak r/e':>14}  fits")


def format_row(row: PlanRow, limit: float) -> str:
    """One line of the plan's table (GB per device; ``router``, ``t.fwd``, ``expert``: the programs' extra)."""
    g = lambda x: f"{x / GB:.1f}"  # noqa: E731
    return (f"{row.mesh:<24}{'on' if row.remat else 'off':>6}{g(row.params):>8}{g(row.teacher):>8}"
            f"{g(row.opt_router) + '/' + g(row.opt_expert):>12}{g(row.router_step):>8}{g(row.teacher_fwd):>8}"
            f"{g(row.expert_step):>8}{g(row.router_peak) + '/' + g(row.expert_peak):>14}  "
            f"{'yes' if row.peak <= limit else 'no'}")
