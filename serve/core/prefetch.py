"""Prefetch planning: what to load before it is needed.

Modes (``PREFETCH_MODES``):
- ``none``: on-demand loading. A layer's missing slices are loaded when that layer is reached.
- ``layer``: layer-ahead loading (paper section 6.3). Pre-gating tells exactly which experts a batch needs, so the
  slices of layer l+1 load while layer l computes; ``CostModel.step_s(pipelined=True)`` times it.
- ``next``: ``layer``, plus speculative loads for the next iteration. While a batch runs, the planner predicts
  the next batch from the pending, already pre-gated work and loads its missing keys (whole experts, or their
  first-layer slices), overlapping the transfer with the current compute.

Planning the ``next`` loads:

1. Walk the pending items in the order the batching policy would serve them (``Scheduler.service_order``),
   until the next item does not fit the tokens left or, with a sequence cap (``max_batch_requests``), no slot
   is left. Tokens the running batch is about to generate are not pre-gated yet, so they are not predicted.
2. Collect the distinct experts touched, in order of first appearance.
3. Map each to its key (the expert, or the slice ``0 * num_experts + expert`` of layer 0) and keep the
   non-resident ones; the cache refuses a load that would evict a key needed sooner (``ExpertCache.prefetch``).
"""

from collections.abc import Iterable

from serve.core.batching import take_until_full
from serve.core.types import Request, ServeError

PREFETCH_MODES = ("none", "layer", "next")


def check_mode(mode: str) -> str:
    if mode not in PREFETCH_MODES:
        raise ServeError(f"unknown prefetch mode {mode!r}; choose one of {', '.join(PREFETCH_MODES)}")
    return mode


def predict_next_experts(
    service_order: Iterable[Request], max_batch_tokens: int, max_batch_requests: int | None = None,
    max_batch_experts: int | None = None,
) -> list[int]:
    """Steps 1-2: distinct experts of the predicted next batch, in order of first appearance."""
    seen = {}  # a dict keeps first-appearance order
    for request in take_until_full(service_order, max_batch_tokens, max_batch_requests, max_batch_experts):
        for expert in request.work_experts:
            seen.setdefault(expert)
    return list(seen)


def plan_prefetch(predicted_experts: Iterable[int], resident) -> list[int]:
    """Step 3: keys to load for the predicted experts that are not resident yet.

    The key of expert e is e for whole experts, and for slices the layer-0 slice ``0 * num_experts + e`` is e
    too; the unit only changes how many bytes a key weighs.
    """
    return [expert for expert in predicted_experts if expert not in resident]
