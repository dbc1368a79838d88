"""Iteration-level (continuous) batching over pre-gated work items.

Every live request has exactly one pending work item: its prefill, or its next decode token, whose expert is
known because the router runs before the backbone. Items wait in FIFO queues; which queues exist and in what
order they are drained is the batching policy. A new batch is formed at every iteration, so requests join and
leave between iterations (continuous batching).

A batch has two limits: the token budget ``max_batch_tokens`` (prefill tokens + one per decode item) and,
optionally, the sequence cap ``max_batch_requests`` (work items per batch; each live request has at most one
pending item, so this is the number of sequences per iteration: DeepSpeed-inference's batch size, vLLM's
``max_num_seqs``). An item "fits" when its tokens fit the tokens left and a slot is left. With the cap None,
only the token budget applies.

``Scheduler.next_batch(iteration)`` forms one batch:

1. Starvation bound. While the oldest waiting item (smallest ready iteration over all queue heads) has waited
   ``max_wait_iterations`` iterations or more and fits, it is taken first. Each queue's head is its oldest
   item, because items are pushed in order of readiness and only heads are popped.
2. The policy fills the rest of the batch:
   - ``expert-aware``: the paper's Algorithm 1, with its defects fixed. One queue per expert; a prefill sits in
     the queue of its most frequent prompt expert; queue sizes are counted in tokens, like the budget.
     a. E = the queue holding the most tokens (lowest id on ties). If every queue is empty, or no token or
        slot is left, stop.
     b. If all of queue E fits (its tokens fit the tokens left and its item count fits the slots left), take
        it whole, and repeat from a.
     c. Otherwise take the longest FIFO prefix of queue E that fits both limits, and stop.
   - ``decode-first``: the decode queue, then the prefill queue (DeepSpeed-inference style).
   - ``prefill-first``: the prefill queue, then the decode queue (vLLM / TGI style).
   - ``fcfs``: one queue in order of readiness.
   Queues are drained from the head; a head that does not fit ends that queue's turn (strict FIFO, so a long
   prompt is never overtaken forever by short ones). No slot left ends the fill.
3. The batch lists its requests, its token count and the distinct experts it touches.

``Scheduler.service_order()`` is the lookahead: the pending items in the order they would be served if nothing
new arrived. The cap does not change that order, only where the next batch ends; ``project_next_batch()`` cuts
the order at both limits (the prefetch planner's prediction, serve.core.prefetch).

``service_order(continuing)`` also projects hypothetical one-token decode items (``ContinuingItem``), one per
expert id of ``continuing``: the running batch's requests that will submit a next token, guessed to stay on
their current token's expert (the simulator's ``lookahead_continuing``). Each sits where ``submit_decodes`` would
put it at the next iteration: at the tail of its expert's queue, whose size grows by one token before queues are
ordered largest-first (expert-aware), at the tail of the decode queue (decode-first, prefill-first), or at the
tail (fcfs). They are ready at the next iteration, so they are overdue only when ``max_wait_iterations`` is 0.

Time is never read here: the caller passes the iteration index.
"""

import dataclasses
import heapq
import itertools
from collections.abc import Iterator

from serve.core.batching import NO_CAP, ContinuingItem, ExpertCap, make_batching, take_until_full
from serve.core.types import Batch, Request, RequestState, ServeError, prefill_chunks

POLICIES = ("expert-aware", "decode-first", "prefill-first", "fcfs")


@dataclasses.dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Batching knobs.

    Attributes:
      policy: one of POLICIES.
      max_batch_tokens: token budget of one iteration (prefill tokens + one per decode request).
      max_wait_iterations: starvation bound; an item that has waited this many iterations is scheduled ahead of
        the policy. None disables the bound.
      max_batch_requests: sequence cap; at most this many work items (= sequences) per batch. None: no cap.
      max_batch_experts: expert cap; a batch touches at most this many distinct experts (the real engine sets
        it to its number of device slots). With it, prompts are prefilled in chunks that each fit the cap and
        the token budget (``types.prefill_chunks``). None: no cap.
      prefer_resident: expert-aware only: a resident expert's queue counts as (1 + prefer_resident) times its
        tokens when the next queue is chosen (module docstring). 0: the paper's Algorithm 1. Needs the cache's
        resident set (``Scheduler(..., resident=cache.resident)``).
    """

    policy: str = "expert-aware"
    max_batch_tokens: int = 256
    max_wait_iterations: int | None = 64
    max_batch_requests: int | None = None
    max_batch_experts: int | None = None
    prefer_resident: float = 0.0

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ServeError(f"unknown batching policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        if not isinstance(self.max_batch_tokens, int) or self.max_batch_tokens < 1:
            raise ServeError(f"max_batch_tokens={self.max_batch_tokens!r} must be a positive integer")
        if self.max_wait_iterations is not None and (
            not isinstance(self.max_wait_iterations, int) or self.max_wait_iterations < 0
        ):
            raise ServeError(f"max_wait_iterations={self.max_wait_iterations!r} must be None or an integer >= 0")
        if self.max_batch_requests is not None and (
            not isinstance(self.max_batch_requests, int)
            or isinstance(self.max_batch_requests, bool)
            or self.max_batch_requests < 1
        ):
            raise ServeError(f"max_batch_requests={self.max_batch_requests!r} must be None or a positive integer")
        if self.max_batch_experts is not None and (
            not isinstance(self.max_batch_experts, int)
            or isinstance(self.max_batch_experts, bool)
            or self.max_batch_experts < 1
        ):
            raise ServeError(f"max_batch_experts={self.max_batch_experts!r} must be None or a positive integer")
        check_prefer_resident(self.prefer_resident, self.policy)

    def chunks(self, spec):
        """The prefill chunks of ``spec`` under this config (one chunk, the whole prompt, without an expert cap)."""
        if self.max_batch_experts is None:
            return None
        return prefill_chunks(spec.prompt_experts, self.max_batch_experts, self.max_batch_tokens)

    @property
    def slot_limit(self) -> int:
        """Work items one batch may hold (a number larger than any queue when there is no cap)."""
        return NO_CAP if self.max_batch_requests is None else self.max_batch_requests


def check_prefer_resident(weight, policy: str) -> None:
    """``prefer_resident`` is a finite number >= 0, and nonzero only for expert-aware batching."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
        raise ServeError(f"prefer_resident={weight!r} must be a finite number >= 0")
    if weight and policy != "expert-aware":
        raise ServeError(f"prefer_resident={weight!r} applies to expert-aware batching only, not {policy!r}")


class Scheduler:
    """Holds the pending work items and forms one batch per iteration (see the module docstring)."""

    def __init__(self, config: SchedulerConfig, num_experts: int, resident=None):
        """``resident``: the expert cache's live set of resident expert ids, read at every batch by
        ``prefer_resident`` (the set object itself, not a copy)."""
        if not isinstance(num_experts, int) or num_experts < 1:
            raise ServeError(f"num_experts={num_experts!r} must be a positive integer")
        if config.prefer_resident and resident is None:
            raise ServeError("prefer_resident needs the expert cache's resident set (Scheduler(..., resident=...)); "
                             "without a cache every expert is resident")
        self.config = config
        self.num_experts = num_experts
        self._policy = make_batching(config.policy, num_experts, config.prefer_resident, resident)
        self._num_pending = 0
        self._next_iteration = 0  # the iteration the next batch will most likely be formed at
        # Pending items touching each expert; lets a lookahead stop once it has seen every expert in use.
        self.pending_by_expert = [0] * num_experts

    def __len__(self) -> int:
        """Number of pending work items."""
        return self._num_pending

    @property
    def pending_tokens(self) -> int:
        return sum(q.tokens for q in self._policy.queues)

    def submit(self, request: Request, iteration: int) -> None:
        """Make the request's pending work item (its prefill or its next decode token) ready at ``iteration``."""
        if request.state is RequestState.QUEUED:
            spec = request.spec
            if request.work_tokens > self.config.max_batch_tokens:
                raise ServeError(
                    f"request {spec.request_id!r}: prompt of {spec.prompt_len} tokens exceeds "
                    f"max_batch_tokens={self.config.max_batch_tokens}, so it could never be scheduled"
                )
            cap = self.config.max_batch_experts
            if cap is not None and len(request.work_experts) > cap:
                raise ServeError(f"request {spec.request_id!r}: a prefill chunk touches {len(request.work_experts)} "
                                 f"experts, more than max_batch_experts={cap} (chunk it with Scheduler.config.chunks)")
            low, high = spec.min_expert(), spec.max_expert()
            if low < 0 or high >= self.num_experts:
                bad = low if low < 0 else high
                raise ServeError(
                    f"request {spec.request_id!r}: expert id {bad} out of range [0, {self.num_experts})"
                )
        elif request.state is not RequestState.DECODE:
            raise ServeError(f"cannot submit {request!r}: only queued or decoding requests have pending work")
        request.ready_iteration = iteration
        self._policy.queue_for(request).push(request)
        self._num_pending += 1
        for expert in request.work_experts:
            self.pending_by_expert[expert] += 1

    def submit_decodes(self, requests: list[Request], iteration: int) -> None:
        """``submit`` for requests known to be decoding (the simulator's hot path: no checks)."""
        queue_for = self._policy.queue_for
        pending_by_expert = self.pending_by_expert
        for request in requests:
            request.ready_iteration = iteration
            queue_for(request).push(request)
            pending_by_expert[request.queue_expert] += 1
        self._num_pending += len(requests)

    def next_batch(self, iteration: int) -> Batch:
        """Form the batch of ``iteration``; it may be empty when nothing is pending."""
        self._next_iteration = iteration + 1
        budget = self.config.max_batch_tokens
        limit = self.config.slot_limit
        chosen = []
        bound = self.config.max_wait_iterations
        cap = None if self.config.max_batch_experts is None else ExpertCap(self.config.max_batch_experts)
        if bound is not None:
            budget = self._take_overdue(chosen, budget, limit, iteration - bound, cap)
        num_forced = len(chosen)
        self._policy.fill(chosen, budget, limit, cap)
        self._num_pending -= len(chosen)

        experts = set()
        num_tokens = 0
        num_prefill = 0
        pending_by_expert = self.pending_by_expert
        for request in chosen:
            for expert in request.work_experts:
                pending_by_expert[expert] -= 1
            wait = iteration - request.ready_iteration
            request.total_wait += wait
            if wait > request.max_wait:
                request.max_wait = wait
            num_tokens += request.work_tokens
            if request.state is RequestState.QUEUED:
                request.state = RequestState.PREFILL
                num_prefill += 1
                experts.update(request.work_experts)
            else:
                experts.add(request.queue_expert)
        return Batch(iteration, tuple(chosen), num_tokens, tuple(sorted(experts)), num_prefill, num_forced)

    def _take_overdue(self, chosen: list, budget: int, limit: int, ready_limit: int, cap=None) -> int:
        """Step 1: oldest first, take heads that became ready at or before ``ready_limit``.

        A k-way merge over the queues: each queue is ordered by readiness, so a heap of the overdue heads yields
        the overdue items oldest first (ties by workload position).
        """
        queues = self._policy.queues
        heap = []
        for number, queue in enumerate(queues):
            if queue.items and queue.items[0].ready_iteration <= ready_limit:
                head = queue.items[0]
                heap.append((head.ready_iteration, head.index, number))
        heapq.heapify(heap)
        while heap and len(chosen) < limit:
            queue = queues[heap[0][2]]
            head = queue.items[0]
            if head.work_tokens > budget or (cap is not None and not cap.admits(head)):
                break
            chosen.append(queue.pop())
            budget -= head.work_tokens
            if cap is not None:
                cap.take(head)
            if queue.items and queue.items[0].ready_iteration <= ready_limit:
                head = queue.items[0]
                heapq.heapreplace(heap, (head.ready_iteration, head.index, heap[0][2]))
            else:
                heapq.heappop(heap)
        return budget

    def service_order(self, continuing=()) -> Iterator[Request]:
        """Pending items in the order they would be served if nothing new arrived (the lookahead).

        Step 1 of ``next_batch`` comes first here too: items already overdue at the next iteration, oldest first,
        then the policy's order without them. Without it, under overload a Belady lookahead would rank the
        overdue items of small expert queues last although the next batch takes them first.

        ``continuing``: expert ids of hypothetical one-token decode items submitted at the next iteration, in
        submission order; each is yielded as a ``ContinuingItem`` where the policy would serve it (module
        docstring). Empty: only the real pending items, exactly as before.
        """
        extra = ()
        if continuing:
            ready = self._next_iteration
            extra = [ContinuingItem(expert, ready, number) for number, expert in enumerate(continuing)]
        bound = self.config.max_wait_iterations
        if bound is None:
            return self._policy.service_order(extra)
        ready_limit = self._next_iteration - bound
        queues = self._policy.queues
        sources = [q.items for q in queues]
        if extra:
            sources.append(extra)  # ready at the next iteration: overdue only when bound is 0
        if not any(items and items[0].ready_iteration <= ready_limit for items in sources):
            return self._policy.service_order(extra)

        def overdue(request: Request) -> bool:
            return request.ready_iteration <= ready_limit

        # Lazy, because the lookahead usually stops after a few items: a queue holds its items in readiness
        # order, so its overdue items are a prefix, and merging the prefixes gives them oldest first.
        first = heapq.merge(
            *(itertools.takewhile(overdue, items) for items in sources), key=lambda r: (r.ready_iteration, r.index)
        )
        return itertools.chain(first, itertools.filterfalse(overdue, self._policy.service_order(extra)))

    def project_next_batch(self) -> list[Request]:
        """The next batch as the lookahead projects it: ``service_order()`` cut where the next item no longer
        fits the token budget or no slot is left (``max_batch_requests``).

        For expert-aware batching this is exactly the batch ``next_batch`` forms when no item is overdue and
        nothing new arrives (whole largest queues, then a FIFO prefix). For the phase-ordered policies it can
        end earlier: the walk stops at the first head that does not fit, while ``next_batch`` moves on to the
        other queue.
        """
        config = self.config
        return take_until_full(self.service_order(), config.max_batch_tokens, config.max_batch_requests,
                               config.max_batch_experts)

    def cancel(self, request: Request) -> bool:
        """Remove ``request``'s pending work item (an aborted request); returns whether it was pending."""
        for queue in self._policy.queues:
            if request in queue.items:
                queue.items.remove(request)
                queue.tokens -= request.work_tokens
                self._num_pending -= 1
                for expert in request.work_experts:
                    self.pending_by_expert[expert] -= 1
                return True
        return False
