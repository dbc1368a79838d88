"""Building an engine's parts from a loaded model: slot store, caches, scheduler, expert cache, programs."""

import dataclasses

import jax

from readme_jax.model import abstract_model, init_cache
from serve.core.cache_policies import EXPECTED, make_policy
from serve.core.expert_cache import ExpertCache
from serve.core.next_use import NextUseConfig
from serve.core.scheduler import Scheduler, SchedulerConfig
from serve.core.types import ServeError
from serve.engine.programs import Programs
from serve.engine.store import SlotStore, leaf_paths


@dataclasses.dataclass
class Parts:
    num_experts: int
    slots: int
    context: int
    leaves: list
    router_leaves: list | None
    cache_kv: tuple
    router_kv: tuple | None
    store: SlotStore | None
    cache: ExpertCache | None
    scheduler: Scheduler
    programs: Programs
    next_use: object = None


def build(lm, config) -> Parts:
    from readme_jax.lm import MoELM
    from readme_jax.moe import MoELlama

    cfg = lm.cfg
    moe = isinstance(lm, MoELM)
    contexts = [config.max_context, cfg.max_seq_len]
    router_leaves = router_treedef = None
    if moe:
        if lm.router is None:
            raise ServeError(f"{lm.source}: serving a MoE needs its trained router (run `readme-jax train`)")
        if cfg.form != "sliced" or cfg.stacked_slots:
            raise ServeError(f"{lm.source}: the engine serves the sliced form with per-slot weights (load with "
                             "form='sliced' and the default kernel)")
        if cfg.n_slots != cfg.n_experts:
            raise ServeError(f"{lm.source}: load the MoE with every expert in a slot; the engine makes its own C")
        contexts.append(lm.router.cfg.max_seq_len)
        _, router_leaves, router_treedef = leaf_paths(lm.router_state)
    num_experts = cfg.n_experts if moe else 1
    slots = config.check_slots(num_experts)
    context = min(contexts)
    device = jax.devices()[0]
    store = None
    if moe:
        slot_cfg = cfg.replace(n_slots=slots)
        graphdef, abstract = abstract_model(slot_cfg, MoELlama)
        slot_paths, slot_abstract, treedef = leaf_paths(abstract)
        full_paths, full_leaves, _ = leaf_paths(lm.state)
        store = SlotStore.from_full_state(full_paths, full_leaves, slot_paths, slot_abstract, num_experts, slots,
                                          cfg.n_layers, device)
        leaves = store.leaves
        programs = Programs(graphdef, treedef, lm.router_graphdef, router_treedef, moe=True)
    else:
        _, leaves, treedef = leaf_paths(lm.state)
        programs = Programs(lm.graphdef, treedef, moe=False)
    # Every input committed to the device once: a program called with an uncommitted array where it had a
    # committed one compiles again (measured: 15 s at the first step after the first expert swap).
    on_device = jax.sharding.SingleDeviceSharding(device)
    leaves[:] = jax.device_put(leaves, on_device)
    if router_leaves is not None:
        router_leaves = jax.device_put(router_leaves, on_device)
    cache_kv = jax.device_put(init_cache(cfg, config.max_seqs, context), on_device)
    router_kv = jax.device_put(init_cache(lm.router.cfg, config.max_seqs, context), on_device) if moe else None
    scheduler, cache, next_use = policy_parts(config, num_experts, slots, store)
    return Parts(num_experts, slots, context, leaves, router_leaves, cache_kv, router_kv, store, cache, scheduler,
                 programs, next_use)


def policy_parts(config, num_experts: int, slots: int, store):
    """(scheduler, expert cache or None, next-use model or None) for ``config``: the parts a reset renews."""
    limits = SchedulerConfig(policy=config.batching, max_batch_tokens=config.max_batch_tokens,
                             max_wait_iterations=config.max_wait_iterations, max_batch_requests=config.max_seqs,
                             max_batch_experts=config.max_batch_experts or slots,
                             prefer_resident=config.prefer_resident)
    if store is None:  # a dense model: its one expert is always resident
        return Scheduler(limits, num_experts, resident=frozenset(range(num_experts))), None, None
    cache = ExpertCache(slots, make_policy(config.cache_policy, config.seed), store.expert_bytes, store)
    scheduler = Scheduler(limits, num_experts, resident=cache.resident)
    next_use = None
    if config.cache_policy == EXPECTED:
        stats = config.read_transition_stats()
        if stats is not None:
            stats.check_experts(num_experts, f"transition statistics {config.transition_stats}")
        next_use = NextUseConfig(stats, online=True).model(num_experts)
    return scheduler, cache, next_use
