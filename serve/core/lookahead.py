"""Belady's view of the future over a live scheduler's pending work (simulator and engine alike).

The running batch's own keys come first, then the pending pre-gated items in the order the batching policy
would serve them (``Scheduler.service_order``). Pure Python: it reads request ids and expert ids only.
"""

import bisect
import itertools
import math

from serve.core.batching import ContinuingItem
from serve.core.next_use import expected_first_use
from serve.core.types import RequestState


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


class ExpectedLookahead(QueueLookahead):
    """The view of policy ``belady-expected``: Belady's known future plus forecast next tokens.

    Time is counted in iterations from now: the running batch is at 0 (a slice of layer l at l / N), the i-th
    projected batch of the pending work at i (the service order cut where the token budget or the sequence cap
    is full, as ``take_until_full`` cuts it). ``next_step(key)`` is the projected time of the key's first pending
    use (``inf`` when none). The live requests are the forecast's anchors: a running request at 0 on its current
    token's expert (unless it reaches max_new_tokens now), a pending one at its projected batch on its pending
    token's expert (a prefill: its last prompt token's). From an anchor at t0 on expert c, its k-th next token
    is assumed to run at t0 + k * period, where period = live requests / mean items per batch, the mean time
    between two tokens of one request. ``expected_next_use(key)`` combines the known use with those forecasts
    (``serve.core.next_use``, steps 2-3); anchors on one expert at one time are grouped, so the cost grows with
    experts and projected batches, not with requests.
    """

    def __init__(self, batch_keys, scheduler, num_experts: int, layers: int, max_items, batch, model):
        super().__init__(batch_keys, scheduler, num_experts, layers, max_items)
        self._batch = batch
        self._model = model
        self._step = None
        self._groups = None
        self._memo = {}
        live = len(scheduler) + len(batch.requests)
        self._period = max(1.0, live / max(model.items_per_batch, 1.0))

    def next_step(self, key: int) -> float:
        layer, expert = divmod(key, self._num_experts)
        index = self._batch_index.get(key)
        if index is not None and index > self._position:
            return layer / self._layers
        if self._step is None:
            self._first_rank = self._scan()
        step = self._step.get(expert)
        return math.inf if step is None else step + layer / self._layers

    def expected_next_use(self, key: int) -> float:
        if self._step is None:
            self._first_rank = self._scan()
        known = self.next_step(key)
        memo = (key, known)  # a victim choice asks for every candidate, and a batch may need several
        value = self._memo.get(memo)
        if value is None:
            value = self._memo[memo] = expected_first_use(known, self._forecast_events(key, known), self._far)
        return value

    def _forecast_events(self, key: int, known: float) -> list:
        """(time, survival) of the forecast uses of ``key`` before ``known``, merged per time, sorted."""
        layer, expert = divmod(key, self._num_experts)
        offset = layer / self._layers
        log_miss = self._model.forecast.log_miss
        period = self._period
        served = self._served[expert]  # projected batches at which this expert's queue runs
        fallback = self._end
        logs = {}  # time -> log of the chance that no forecast use happens at that time
        for (current, start), count in self._groups.items():
            # A token joining this expert's queue after `start` runs at the queue's next projected service.
            at = bisect.bisect_right(served, start)
            time = (served[at] if at < len(served) else max(start + period, fallback)) + offset
            for per_token in log_miss[current]:
                if time >= known:
                    break
                value = per_token[expert]
                if value:
                    logs[time] = logs.get(time, 0.0) + value * count
                time += period
        return [(time, math.exp(value)) for time, value in sorted(logs.items())]

    def _scan(self) -> dict:
        """One walk over the service order: Belady's positions (first rank of each expert's real pending work),
        the projected batches, and the anchors."""
        first = {}
        groups = {}
        likely = self._model.forecast.likely
        guesses = []
        for request in self._batch.requests:
            if request.generated + 1 < request.spec.max_new_tokens:  # the client's limit, not the trace's end
                current = _current_expert(request)
                guesses.append(likely[current])
                groups[(current, 0)] = groups.get((current, 0), 0) + 1
        # The likeliest next token of each running request takes its place in the order (as with
        # lookahead_continuing), so that the projected batches follow the queues the running requests refill.
        limits = self._scheduler.config
        budget, slots = limits.max_batch_tokens, limits.slot_limit
        step = {}
        served = [[] for _ in range(self._num_experts)]
        projected, tokens, items = 1, 0, 0
        order = self._scheduler.service_order(guesses)
        for rank, request in enumerate(itertools.islice(order, self._max_items)):
            if tokens + request.work_tokens > budget or items >= slots:  # take_until_full's cut, batch by batch
                projected += 1
                tokens = items = 0
            tokens += request.work_tokens
            items += 1
            runs = served[request.queue_expert]
            if not runs or runs[-1] != projected:
                runs.append(projected)
            if type(request) is ContinuingItem:
                continue  # a forecast, not known work
            for expert in request.work_experts:
                if expert not in first:
                    first[expert] = rank
                    step[expert] = projected
            # A decode's anchor is its token's expert (its queue); a prefill's, its last prompt token's expert
            # (a one-token prompt's queue is that expert too).
            current = request.queue_expert if request.work_tokens == 1 else request.spec.prompt_experts[-1]
            anchor = (current, projected)
            groups[anchor] = groups.get(anchor, 0) + 1
        self._step = step
        self._served = served
        self._groups = groups
        self._end = projected + 1
        self._far = self._end + (self._model.tokens_ahead + 1) * self._period
        return first


def _current_expert(request) -> int:
    """The expert of the running request's token: a prefill's last prompt token's."""
    if request.state is RequestState.PREFILL:
        return request.spec.prompt_experts[-1]
    return request.queue_expert
