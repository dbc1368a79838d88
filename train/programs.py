"""The sharded, jitted programs of a training run, built from states that may be concrete or abstract.

The trainer (``train.loop``) builds them from its live arrays; the memory plan (``train.plan``) from
``jax.ShapeDtypeStruct`` states of a model that was never allocated. Both get the same shardings and the same
compiled steps, so the plan measures what a run would execute.
"""

import jax
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from train import sharding, steps
from train.config import TrainConfig


def batch_shardings(mesh):
    """(tokens / valid / labels [A, b, L], teacher scores [A, Z, b, L, E]): the micro-batch axis b is split
    over the data-parallel devices, the accumulation axis A is scanned."""
    lead = sharding.batch_sharding(mesh, 1).spec[0]
    return NamedSharding(mesh, P(None, lead, None)), NamedSharding(mesh, P(None, None, lead, None, None))


def optimizer(cfg: TrainConfig, params):
    return steps.make_optimizer(cfg.weight_decay, cfg.grad_clip, params)


def opt_shardings(tx, params, params_sh, mesh):
    """The optimizer state's shardings: each moment like its parameter, scalars (step counts) replicated."""
    abstract = jax.eval_shape(tx.init, params)
    rep = sharding.replicated(mesh)
    return optax.tree_map_params(tx, lambda _, s: s, abstract, params_sh, transform_non_params=lambda _: rep)


def trainable_filter(cfg: TrainConfig):
    """What the expert stage trains: every backbone parameter, or the MLP weights only."""
    if cfg.expert_params == "all":
        return nnx.Param
    return lambda path, _: any(str(p) in steps.MLP_NAMES for p in path)


def split_trainable(cfg: TrainConfig, params):
    """(trainable, frozen) parts of the backbone's parameters for the expert stage."""
    return nnx.split_state(params, trainable_filter(cfg), ...)


def router_step(cfg: TrainConfig, spec: steps.StepSpec, router_gd, router_params, mesh):
    """(tx, jitted step, jitted optimizer init) of the router stage; ``in_shardings`` of the step as well."""
    tx = optimizer(cfg, router_params)
    batch_sh, scores_sh = batch_shardings(mesh)
    rep = sharding.replicated(mesh)
    r_sh = sharding.state_shardings(router_params, mesh)
    o_sh = opt_shardings(tx, router_params, r_sh, mesh)
    ins = (r_sh, o_sh, batch_sh, batch_sh, scores_sh, batch_sh, rep)
    fn = steps.make_router_step(spec, router_gd, tx, (ins, (r_sh, o_sh, rep)))
    return tx, fn, jax.jit(tx.init, out_shardings=o_sh), ins


def expert_step(cfg: TrainConfig, spec: steps.StepSpec, router_gd, backbone_gd, params, masks, router_params,
                mesh):
    """(tx, jitted step, jitted optimizer init, in_shardings) of the expert stage."""
    trainable, frozen = split_trainable(cfg, params)
    tx = optimizer(cfg, trainable)
    batch_sh, _ = batch_shardings(mesh)
    rep = sharding.replicated(mesh)
    t_sh = sharding.state_shardings(trainable, mesh)
    o_sh = opt_shardings(tx, trainable, t_sh, mesh)
    m_sh = sharding.state_shardings(masks, mesh)
    ins = (t_sh, o_sh, sharding.state_shardings(frozen, mesh), m_sh, sharding.state_shardings(router_params, mesh),
           batch_sh, batch_sh, rep)
    if spec.uses_teacher:  # the teacher's parameters and the all-ones masks that run it dense
        ins += (sharding.state_shardings(params, mesh), m_sh)
    fn = steps.make_expert_step(spec, router_gd, backbone_gd, tx, (ins, (t_sh, o_sh, rep)))
    return tx, fn, jax.jit(tx.init, out_shardings=o_sh), ins
