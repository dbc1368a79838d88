"""Belady's view of the future over a live scheduler's pending work (simulator and engine alike).

The running batch's own keys come first, then the pending pre-gated items in the order the batching policy
would serve them (``Scheduler.service_order``). Pure Python: it reads request ids and expert ids only.
"""

import itertools
import math


class QueueLookahead:
    """Belady's view of the future inside the simulator (step 3 of the module docstring).

    Positions: the running batch's keys are 0..A-1 in access order (layer-major for slices). ``move_to`` is
    given the last index of the group being accessed, so a key of a later layer of this batch is used at its
    index. Pending item r (in service order) then touches key ``layer * E + e`` at A + r * L + layer, where L
    is 1 for whole experts and N for slices. ``continuing``: expert ids of hypothetical decode items the
    scheduler projects with the pending work (``Scheduler.service_order(continuing)``). Keys found nowhere
    within ``max_items`` pending items are never used again (``inf``). The scan of the pending work runs once,
    at the first query, and stops early once every expert with pending work (or a continuing item) has been
    seen.

    A sequence cap (``max_batch_requests``) does not change the service order, only where each projected batch
    ends. Projected batch numbers are a non-decreasing function of the rank, so ranking by position gives the
    same eviction order as ranking by projected batch, up to ties between keys of one projected batch (both
    needed at the same iteration, where either eviction costs one load).
    """

    def __init__(self, batch_keys, scheduler, num_experts: int, layers: int, max_items, continuing=()):
        self._position = 0
        self._batch_index = {key: i for i, key in enumerate(batch_keys)}
        self._base = len(batch_keys)
        self._scheduler = scheduler
        self._num_experts = num_experts
        self._layers = layers
        self._max_items = max_items
        self._first_rank = None
        self._continuing = continuing

    def move_to(self, index: int) -> None:
        """Look from the running batch's access ``index`` (the last of the group being accessed)."""
        self._position = index

    def next_use(self, key: int) -> float:
        index = self._batch_index.get(key)
        if index is not None and index > self._position:
            return index
        if self._first_rank is None:
            self._first_rank = self._scan()
        layer, expert = divmod(key, self._num_experts)
        rank = self._first_rank.get(expert)
        return math.inf if rank is None else self._base + rank * self._layers + layer

    def _scan(self) -> dict:
        first = {}
        pending = self._scheduler.pending_by_expert
        wanted = len({e for e, count in enumerate(pending) if count}.union(self._continuing))
        if not wanted:
            return first
        order = self._scheduler.service_order(self._continuing)
        for rank, request in enumerate(itertools.islice(order, self._max_items)):
            for expert in request.work_experts:
                if expert not in first:
                    first[expert] = rank
            if len(first) == wanted:
                break
        return first
