"""Iteration-level (continuous) batching over pre-gated work items.

Every live request has exactly one pending work item: its prefill, or its next decode token, whose expert is
known because the router runs before the backbone. Items wait in FIFO queues; which queues exist and in what
order they are drained is the batching policy. A new batch is formed at every iteration, so requests join and
leave between iterations (continuous batching).

``Scheduler.next_batch(iteration)`` forms one batch:

1. Starvation bound. While the oldest waiting item (smallest ready iteration over all queue heads) has waited
   ``max_wait_iterations`` iterations or more and fits the remaining token budget, it is taken first. Each
   queue's head is its oldest item, because items are pushed in order of readiness and only heads are popped.
2. The policy fills the rest of the budget ``max_batch_tokens``:
   - ``expert-aware``: the paper's Algorithm 1, with its defects fixed. One queue per expert; a prefill sits in
     the queue of its most frequent prompt expert; queue sizes are counted in tokens, like the budget.
     a. E = the queue holding the most tokens (lowest id on ties). If every queue is empty, stop.
     b. If all of queue E fits the remaining budget, take it whole, and repeat from a.
     c. Otherwise take the FIFO prefix of queue E that fits, and stop.
   - ``decode-first``: the decode queue, then the prefill queue (DeepSpeed-inference style).
   - ``prefill-first``: the prefill queue, then the decode queue (vLLM / TGI style).
   - ``fcfs``: one queue in order of readiness.
   Queues are drained from the head; a head that does not fit ends that queue's turn (strict FIFO, so a long
   prompt is never overtaken forever by short ones).
3. The batch lists its requests, its token count and the distinct experts it touches.

Time is never read here: the caller passes the iteration index.
"""

import collections
import dataclasses
import heapq
import itertools
from collections.abc import Iterator

from serve.types import Batch, Request, RequestState, ServeError

POLICIES = ("expert-aware", "decode-first", "prefill-first", "fcfs")


@dataclasses.dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Batching knobs.

    Attributes:
      policy: one of POLICIES.
      max_batch_tokens: token budget of one iteration (prefill tokens + one per decode request).
      max_wait_iterations: starvation bound; an item that has waited this many iterations is scheduled ahead of
        the policy. None disables the bound.
    """

    policy: str = "expert-aware"
    max_batch_tokens: int = 256
    max_wait_iterations: int | None = 64

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ServeError(f"unknown batching policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        if not isinstance(self.max_batch_tokens, int) or self.max_batch_tokens < 1:
            raise ServeError(f"max_batch_tokens={self.max_batch_tokens!r} must be a positive integer")
        if self.max_wait_iterations is not None and (
            not isinstance(self.max_wait_iterations, int) or self.max_wait_iterations < 0
        ):
            raise ServeError(f"max_wait_iterations={self.max_wait_iterations!r} must be None or an integer >= 0")


class FifoQueue:
    """A deque of requests plus the number of tokens their pending items hold."""

    __slots__ = ("items", "tokens")

    def __init__(self):
        self.items = collections.deque()
        self.tokens = 0

    def push(self, request: Request) -> None:
        self.items.append(request)
        self.tokens += request.work_tokens

    def pop(self) -> Request:
        request = self.items.popleft()
        self.tokens -= request.work_tokens
        return request

    def take_prefix(self, out: list, budget: int) -> int:
        """Move heads into ``out`` while they fit ``budget``; returns the budget left."""
        items = self.items
        while items and items[0].work_tokens <= budget:
            request = items.popleft()
            self.tokens -= request.work_tokens
            budget -= request.work_tokens
            out.append(request)
        return budget

    def take_all(self, out: list) -> int:
        """Move every item into ``out``; returns the tokens moved."""
        tokens = self.tokens
        out.extend(self.items)
        self.items.clear()
        self.tokens = 0
        return tokens


class _ExpertAware:
    def __init__(self, num_experts: int):
        self.queues = [FifoQueue() for _ in range(num_experts)]

    def queue_for(self, request: Request) -> FifoQueue:
        return self.queues[request.queue_expert]

    def fill(self, out: list, budget: int) -> int:
        queues = self.queues
        while budget > 0:
            # max() returns the first maximal queue, i.e. the lowest expert id on ties.
            largest = max(queues, key=_tokens)
            if largest.tokens == 0:
                break  # every queue is empty (the printed pseudo-code would loop forever here)
            if largest.tokens <= budget:
                budget -= largest.take_all(out)
                continue
            budget = largest.take_prefix(out, budget)
            break
        return budget

    def service_order(self) -> Iterator[Request]:
        ordered = sorted(range(len(self.queues)), key=lambda e: -self.queues[e].tokens)
        return itertools.chain.from_iterable(self.queues[e].items for e in ordered)


def _tokens(queue: FifoQueue) -> int:
    return queue.tokens


class _PhaseOrdered:
    """Two queues (decode, prefill) drained in a fixed order."""

    def __init__(self, decode_first: bool):
        self.decode = FifoQueue()
        self.prefill = FifoQueue()
        self.queues = [self.decode, self.prefill] if decode_first else [self.prefill, self.decode]

    def queue_for(self, request: Request) -> FifoQueue:
        return self.prefill if request.state is RequestState.QUEUED else self.decode

    def fill(self, out: list, budget: int) -> int:
        for queue in self.queues:
            budget = queue.take_prefix(out, budget)
        return budget

    def service_order(self) -> Iterator[Request]:
        return itertools.chain.from_iterable(q.items for q in self.queues)


class _Fcfs:
    def __init__(self):
        self.queue = FifoQueue()
        self.queues = [self.queue]

    def queue_for(self, request: Request) -> FifoQueue:
        return self.queue

    def fill(self, out: list, budget: int) -> int:
        return self.queue.take_prefix(out, budget)

    def service_order(self) -> Iterator[Request]:
        return iter(self.queue.items)


def _make_policy(name: str, num_experts: int):
    if name == "expert-aware":
        return _ExpertAware(num_experts)
    if name == "fcfs":
        return _Fcfs()
    return _PhaseOrdered(decode_first=(name == "decode-first"))


class Scheduler:
    """Holds the pending work items and forms one batch per iteration (see the module docstring)."""

    def __init__(self, config: SchedulerConfig, num_experts: int):
        if not isinstance(num_experts, int) or num_experts < 1:
            raise ServeError(f"num_experts={num_experts!r} must be a positive integer")
        self.config = config
        self.num_experts = num_experts
        self._policy = _make_policy(config.policy, num_experts)
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
            if spec.prompt_len > self.config.max_batch_tokens:
                raise ServeError(
                    f"request {spec.request_id!r}: prompt of {spec.prompt_len} tokens exceeds "
                    f"max_batch_tokens={self.config.max_batch_tokens}, so it could never be scheduled"
                )
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
        chosen = []
        bound = self.config.max_wait_iterations
        if bound is not None:
            budget = self._take_overdue(chosen, budget, iteration - bound)
        num_forced = len(chosen)
        self._policy.fill(chosen, budget)
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

    def _take_overdue(self, chosen: list, budget: int, ready_limit: int) -> int:
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
        while heap:
            queue = queues[heap[0][2]]
            head = queue.items[0]
            if head.work_tokens > budget:
                break
            chosen.append(queue.pop())
            budget -= head.work_tokens
            if queue.items and queue.items[0].ready_iteration <= ready_limit:
                head = queue.items[0]
                heapq.heapreplace(heap, (head.ready_iteration, head.index, heap[0][2]))
            else:
                heapq.heappop(heap)
        return budget

    def service_order(self) -> Iterator[Request]:
        """Pending items in the order they would be served if nothing new arrived (the lookahead).

        Step 1 of ``next_batch`` comes first here too: items already overdue at the next iteration, oldest first,
        then the policy's order without them. Without it, under overload a Belady lookahead would rank the
        overdue items of small expert queues last although the next batch takes them first.
        """
        bound = self.config.max_wait_iterations
        if bound is None:
            return self._policy.service_order()
        ready_limit = self._next_iteration - bound
        queues = self._policy.queues
        if not any(q.items and q.items[0].ready_iteration <= ready_limit for q in queues):
            return self._policy.service_order()

        def overdue(request: Request) -> bool:
            return request.ready_iteration <= ready_limit

        # Lazy, because the lookahead usually stops after a few items: a queue holds its items in readiness
        # order, so its overdue items are a prefix, and merging the prefixes gives them oldest first.
        first = heapq.merge(
            *(itertools.takewhile(overdue, q.items) for q in queues), key=lambda r: (r.ready_iteration, r.index)
        )
        return itertools.chain(first, itertools.filterfalse(overdue, self._policy.service_order()))
