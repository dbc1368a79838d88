"""Belady's view of the future over a live scheduler's pending work (simulator and engine alike).

The running batch's own keys come first, then the pending pre-gated items in the order the batching policy
would serve them (``Scheduler.service_order``). Pure Python: it reads request ids and expert ids only.
"""

import bisect
import itertools
import math

from serve.core.batching import ContinuingItem
from serve.core.next_use import expected_first_use
from serve.core.rollout import expert_aware_rollout
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


WALK_ITEMS = 256  # pending items always walked; beyond them only until every pending expert has been seen
OVERDUE_ITEMS = 8  # this many items overdue within the rollout's steps make the rollout give way (see _scan)
ROLLOUT_STEPS = 4  # iterations of expert-aware batching that ExpectedLookahead plays forward
ROLLOUT_MEMO = 1 << 16  # rollouts kept per forecast (about 1 KB each); starts again when full; 0: none


class ExpectedLookahead(QueueLookahead):
    """The view of policy ``belady-expected``: Belady's known future plus forecast next tokens.

    Time is counted in iterations from now: the running batch is at 0 (a slice of layer l at l / N), the
    projected batches of the pending work at 1, 2, ... ``next_use(key)`` is Belady's position in the service
    order with each running request's likeliest next token queued (``continuing``; the policy's order inside
    one expected batch); ``next_step(key)`` is the projected batch of the key's first real pending use
    (``inf`` when none). Projected batches come from ``serve.core.rollout`` under expert-aware batching (a few
    iterations played forward on expected queue sizes, as the running requests refill them), and otherwise from
    the service order cut where the token budget or the sequence cap is full (``take_until_full``'s rule).

    The live requests are the forecast's anchors, each in its forecast context (``serve.core.next_use``: its
    current expert and its home): a running request at 0 on its current token's expert (unless it reaches
    max_new_tokens now), a pending one at its projected batch on its pending token's expert (a prefill: its last
    prompt token's). The rollout refills queues from the running requests' contexts and from the pending items'
    experts (first-order: fewer distinct inputs for its memo). From an anchor at t0, its next token on expert x is assumed to run at the
    first projected service of x's queue after t0 (t0 + period if none), and each later token one period after
    that; period = live requests / mean items per batch, the mean time between two tokens of one request.
    ``expected_next_use(key)`` combines the known use with those forecasts (``serve.core.next_use``, steps
    2-3). Anchors of one context at one time are grouped, so the cost grows with contexts and projected
    batches, not with requests.
    """

    def __init__(self, batch_keys, scheduler, num_experts: int, layers: int, max_items, batch, model):
        self._running = _running_contexts(batch, model)
        table = model.forecast.likely
        likely = [table[context] for context, chunk_done in self._running if not chunk_done]
        super().__init__(batch_keys, scheduler, num_experts, layers, max_items, likely)
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
            self._project()
        step = self._step.get(expert)
        return math.inf if step is None else step + layer / self._layers

    def expected_next_use(self, key: int) -> float:
        if self._step is None:
            self._project()
        known = self.next_step(key)
        if known <= 1.0:
            return known  # forecast uses run at projected batch 1 or later: none can come first
        memo = (key, known)  # a victim choice asks for every candidate, and a batch may need several
        value = self._memo.get(memo)
        if value is None:
            value = self._memo[memo] = expected_first_use(known, self._forecast_events(key, known), self._far)
        return value

    def _forecast_events(self, key: int, known: float) -> list:
        """(time, survival) of the forecast uses of ``key`` before ``known``, merged per time, sorted."""
        layer, expert = divmod(key, self._num_experts)
        offset = layer / self._layers
        forecast = self._model.forecast
        tables = forecast.context_tables
        period = self._period
        served = self._served[expert]  # projected batches at which this expert's queue runs
        fallback = self._end
        logs = {}  # time -> log of the chance that no forecast use happens at that time
        for start, contexts in self._groups.items():
            # A token joining this expert's queue after `start` runs at the queue's next projected service.
            at = bisect.bisect_right(served, start)
            first = (served[at] if at < len(served) else max(start + period, fallback)) + offset
            if first >= known:
                continue
            for context, count in contexts.items():
                time = first
                for per_token in tables[context] or forecast.context_log_miss(context):
                    if time >= known:
                        break
                    value = per_token[expert]
                    if value:
                        logs[time] = logs.get(time, 0.0) + value * count
                    time += period
        return [(time, math.exp(value)) for time, value in sorted(logs.items())]

    def _scan(self) -> dict:
        """Belady's positions (``next_use``) come out of ``_project``'s walk."""
        if self._step is None:
            self._project()
        return self._first_rank

    def _project(self) -> None:
        """One walk over the service order with the running requests' likeliest next tokens queued
        (``continuing``): Belady's positions (the first rank of each expert, those tokens counted), then from the
        real items only the projected time of each expert's first use, of each queue's services, and the
        anchors. (The hypothetical tokens move queues up the order; a queue's own items keep their FIFO order,
        which is all the rollout reads.)"""
        first = {}
        positions = {}
        groups = {}
        running = {}
        model = self._model
        for context, _ in self._running:
            running[context] = running.get(context, 0) + 1
        pending = []
        contexts = []  # each pending item's forecast context (the rollout anchors it at its expert)
        known_contexts = model.contexts
        limits = self._scheduler.config
        # The rollout ignores the starvation bound, so it is used only while no pending item becomes overdue
        # within its steps; otherwise the service order (which puts overdue items first) is cut instead.
        rollout = limits.policy == "expert-aware"
        bound = limits.max_wait_iterations
        overdue_from = -1 if bound is None else self._batch.iteration + ROLLOUT_STEPS - bound
        overdue = 0
        order = self._scheduler.service_order(self._continuing)
        for rank, request in enumerate(itertools.islice(order, self._max_items)):
            if rank >= WALK_ITEMS and self._every_expert_seen(first, positions):
                break  # a long backlog: the rest runs after every expert's first use, beyond the rollout
            touched = request.work_experts
            if request.__class__ is ContinuingItem:
                if touched[0] not in positions:
                    positions[touched[0]] = rank
                continue
            for expert in touched:
                if expert not in first:
                    first[expert] = rank
                if expert not in positions:
                    positions[expert] = rank
            # A decode's anchor is its token's expert (its queue); a prefill's, its last prompt token's expert
            # (a one-token prompt's queue is that expert too).
            tokens = request.work_tokens
            current = request.queue_expert if tokens == 1 else request.spec.prompt_experts[-1]
            if request.ready_iteration <= overdue_from:
                overdue += 1
            pending.append((request.queue_expert, tokens, current, touched))
            known = known_contexts.get(request.index)  # _context inlined: this loop is hot
            context = None if known is None else known.get(current)
            contexts.append(model.context(request, current) if context is None else context)
        self._first_rank = positions
        forecast = self._model.forecast
        if rollout and overdue < min(limits.slot_limit, OVERDUE_ITEMS):
            # The rollout is a pure function of these inputs and of the forecast, and a closed-loop server meets
            # the same pending states again and again (58% repeats on the demo trace at 16 clients), so its
            # results are kept with the forecast they came from (read-only from here on).
            memo_key = (tuple(pending), tuple(sorted(running.items())), limits.max_batch_tokens, limits.slot_limit)
            memo = self._model.rollouts
            found = memo.get(memo_key)
            if found is None:
                item_steps = []
                step, served = expert_aware_rollout(pending, running, forecast.rows, forecast.go,
                                                    limits.max_batch_tokens, limits.slot_limit, ROLLOUT_STEPS,
                                                    self._num_experts, item_steps)
                found = (step, served, item_steps)
                if len(memo) >= ROLLOUT_MEMO:
                    memo.clear()
                if ROLLOUT_MEMO:
                    memo[memo_key] = found
            step, served, item_steps = found
            end = max((runs[-1] for runs in served if runs), default=0) + 1
            anchors = {}
            for context, projected in zip(contexts, item_steps):
                anchors[(context, projected)] = anchors.get((context, projected), 0) + 1
        else:
            with_contexts = [(queue, size, context, touched)
                             for (queue, size, _, touched), context in zip(pending, contexts)]
            step, served, anchors, end = _cut_batches(with_contexts, limits.max_batch_tokens, limits.slot_limit,
                                                      self._num_experts)
        groups[0] = dict(running)  # start -> {context: requests anchored there}
        for (context, start), count in anchors.items():
            at = groups.get(start)
            if at is None:
                at = groups[start] = {}
            at[context] = at.get(context, 0) + count
        self._step = step
        self._served = served
        self._groups = groups
        self._end = end
        self._far = end + (self._model.tokens_ahead + 1) * self._period

    def _every_expert_seen(self, first: dict, positions: dict) -> bool:
        """Whether the walk has met every expert with pending work, and every continuing one."""
        pending = {e for e, count in enumerate(self._scheduler.pending_by_expert) if count}
        return len(first) == len(pending) and len(positions) == len(pending.union(self._continuing))


def _cut_batches(pending, budget: int, slots: int, num_experts: int):
    """The service order cut into projected batches 1, 2, ... (``take_until_full``'s rule, batch after batch):
    first step per expert, the steps at which each queue runs, anchors, and the step after the last."""
    step, anchors = {}, {}
    served = [[] for _ in range(num_experts)]
    projected, tokens, items = 1, 0, 0
    for queue, size, anchor, experts in pending:
        if tokens + size > budget or items >= slots:
            projected += 1
            tokens = items = 0
        tokens += size
        items += 1
        if not served[queue] or served[queue][-1] != projected:
            served[queue].append(projected)
        for expert in experts:
            step.setdefault(expert, projected)
        anchors[(anchor, projected)] = anchors.get((anchor, projected), 0) + 1
    return step, served, anchors, projected + 1


def _running_contexts(batch, model) -> list[tuple[int, bool]]:
    """(forecast context, whether its next item is a prefill chunk) of each running request that may continue
    (``max_new_tokens``: the client's limit, not the trace's end), in batch order. The forecast anchors all of
    them; Belady's position queues the likeliest next token of those whose next item is a token (a request
    between prefill chunks has its next chunk known exactly once it is queued)."""
    out = []
    for request in batch.requests:
        if request.generated + 1 < request.spec.max_new_tokens:
            chunk = request.state is RequestState.PREFILL and not request.last_chunk
            out.append((_context(model, request, _current_expert(request)), chunk))
    return out


def _context(model, request, current: int) -> int:
    """``model.context`` read from its cache first (the lookahead asks for every live request each iteration)."""
    known = model.contexts.get(request.index)
    context = None if known is None else known.get(current)
    return model.context(request, current) if context is None else context


def _current_expert(request) -> int:
    """The expert of the running request's token: a prefill's last prompt token's."""
    if request.state is RequestState.PREFILL:
        return request.spec.prompt_experts[-1]
    return request.queue_expert
