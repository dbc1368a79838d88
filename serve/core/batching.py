"""The batching policies' queues: which FIFO queues exist and in what order they are drained.

``Scheduler`` (serve.core.scheduler) holds one policy object and asks it to ``fill`` a batch, to say which queue
a request waits in (``queue_for``) and in what order the pending items would be served (``service_order``);
the policies themselves are described in the scheduler's module docstring. ``take_until_full`` cuts such an
order where a batch's token budget or sequence cap is reached (the prefetch planner's projection).
"""

import collections
import itertools
import sys
from collections.abc import Iterator

from serve.core.types import Request, RequestState

NO_CAP = sys.maxsize  # the slot limit without a sequence cap: never reached


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

    def take_prefix(self, out: list, budget: int, limit: int, cap=None) -> int:
        """Move heads into ``out`` while they fit ``budget``, ``out`` holds fewer than ``limit`` items and, with
        an ``ExpertCap``, the batch's distinct experts stay within it; returns the budget left."""
        items = self.items
        while items and items[0].work_tokens <= budget and len(out) < limit:
            if cap is not None and not cap.admits(items[0]):
                break
            request = items.popleft()
            self.tokens -= request.work_tokens
            budget -= request.work_tokens
            out.append(request)
            if cap is not None:
                cap.take(request)
        return budget

    def take_all(self, out: list) -> int:
        """Move every item into ``out``; returns the tokens moved."""
        tokens = self.tokens
        out.extend(self.items)
        self.items.clear()
        self.tokens = 0
        return tokens


class ExpertCap:
    """The expert cap of one batch (``SchedulerConfig.max_batch_experts``): the distinct experts taken so far.

    The real engine runs a batch with every expert it touches resident in one of C device slots, so a batch may
    touch at most C distinct experts. An item is admitted when the union of its experts and the batch's stays
    within the cap; every pending item needs at most C on its own (prefills are chunked to fit), so the first
    item of an empty batch always fits.
    """

    __slots__ = ("limit", "experts")

    def __init__(self, limit: int, chosen=()):
        self.limit = limit
        self.experts = set()
        for request in chosen:
            self.experts.update(request.work_experts)

    def admits(self, request) -> bool:
        experts = request.work_experts
        if len(experts) == 1:
            return experts[0] in self.experts or len(self.experts) < self.limit
        return len(self.experts.union(experts)) <= self.limit

    def admits_all(self, requests) -> bool:
        return len(self.experts.union(*(r.work_experts for r in requests))) <= self.limit

    def take(self, request) -> None:
        self.experts.update(request.work_experts)


class ContinuingItem:
    """A hypothetical pending decode item of ``service_order(continuing)``: one token on one expert.

    It has the attributes a lookahead reads from a ``Request`` (``work_experts``, ``work_tokens``,
    ``queue_expert``, ``ready_iteration``, ``index``); ``index`` is its position in ``continuing``.
    """

    __slots__ = ("work_experts", "queue_expert", "ready_iteration", "index")
    work_tokens = 1

    def __init__(self, expert: int, ready_iteration: int, index: int):
        self.work_experts = (expert,)
        self.queue_expert = expert
        self.ready_iteration = ready_iteration
        self.index = index

    def __repr__(self) -> str:
        return f"ContinuingItem(expert={self.queue_expert}, ready_iteration={self.ready_iteration})"


class _ExpertAware:
    def __init__(self, num_experts: int, prefer_resident: float = 0.0, resident=None):
        self.queues = [FifoQueue() for _ in range(num_experts)]
        # Cache-aware choice of queue (``SchedulerConfig.prefer_resident``): a resident expert's queue counts
        # as (1 + prefer_resident) times its tokens. ``resident`` is the cache's live set of expert ids.
        self.boost = 1.0 + prefer_resident
        self.resident = resident if prefer_resident else None

    def _size(self, expert: int, tokens: int) -> float:
        return tokens * self.boost if expert in self.resident else tokens

    def queue_for(self, request: Request) -> FifoQueue:
        return self.queues[request.queue_expert]

    def fill(self, out: list, budget: int, limit: int, cap=None) -> int:
        queues = self.queues
        resident = self.resident
        while budget > 0 and len(out) < limit:
            # max() returns the first maximal queue, i.e. the lowest expert id on ties.
            if resident is None:
                largest = max(queues, key=_tokens)
            else:
                largest = queues[max(range(len(queues)), key=lambda e: self._size(e, queues[e].tokens))]
            if largest.tokens == 0:
                break  # every queue is empty (the printed pseudo-code would loop forever here)
            if (largest.tokens <= budget and len(largest.items) <= limit - len(out)
                    and (cap is None or cap.admits_all(largest.items))):
                if cap is not None:
                    for request in largest.items:
                        cap.take(request)
                budget -= largest.take_all(out)
                continue
            budget = largest.take_prefix(out, budget, limit, cap)
            break
        return budget

    def service_order(self, extra=()) -> Iterator[Request]:
        tails = [[] for _ in self.queues]
        for item in extra:
            tails[item.queue_expert].append(item)
        # Each extra item adds one token to its queue; sorted() is stable, so ties keep the lowest id first.
        if self.resident is None:
            ordered = sorted(range(len(self.queues)), key=lambda e: -(self.queues[e].tokens + len(tails[e])))
        else:
            ordered = sorted(range(len(self.queues)),
                             key=lambda e: -self._size(e, self.queues[e].tokens + len(tails[e])))
        return itertools.chain.from_iterable(itertools.chain(self.queues[e].items, tails[e]) for e in ordered)


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

    def fill(self, out: list, budget: int, limit: int, cap=None) -> int:
        for queue in self.queues:
            budget = queue.take_prefix(out, budget, limit, cap)
        return budget

    def service_order(self, extra=()) -> Iterator[Request]:
        return itertools.chain.from_iterable(
            itertools.chain(q.items, extra) if q is self.decode else q.items for q in self.queues
        )


class _Fcfs:
    def __init__(self):
        self.queue = FifoQueue()
        self.queues = [self.queue]

    def queue_for(self, request: Request) -> FifoQueue:
        return self.queue

    def fill(self, out: list, budget: int, limit: int, cap=None) -> int:
        return self.queue.take_prefix(out, budget, limit, cap)

    def service_order(self, extra=()) -> Iterator[Request]:
        return itertools.chain(self.queue.items, extra)


def make_batching(name: str, num_experts: int, prefer_resident: float = 0.0, resident=None):
    if name == "expert-aware":
        return _ExpertAware(num_experts, prefer_resident, resident)
    if name == "fcfs":
        return _Fcfs()
    return _PhaseOrdered(decode_first=(name == "decode-first"))


def take_until_full(order, max_batch_tokens: int, max_batch_requests: int | None = None,
                    max_batch_experts: int | None = None) -> list[Request]:
    """Items of ``order`` from the start, until one does not fit the tokens left, no slot is left, or (with
    ``max_batch_experts``) it would take the batch over its expert cap."""
    taken = []
    budget = max_batch_tokens
    limit = NO_CAP if max_batch_requests is None else max_batch_requests
    cap = None if max_batch_experts is None else ExpertCap(max_batch_experts)
    for request in order:
        if request.work_tokens > budget or len(taken) >= limit:
            break
        if cap is not None:
            if not cap.admits(request):
                break
            cap.take(request)
        budget -= request.work_tokens
        taken.append(request)
    return taken
