"""Event-driven replay of a workload: scheduler + expert cache + cost model, with no device.

Simulated time jumps from event to event (an arrival while idle, the end of an iteration), so a trace replays
much faster than real time. One iteration:

1. Admit: requests whose decode token was emitted by the previous iteration, then arrivals up to now, become
   ready (their work is pre-gated already). If nothing is pending, jump to the next arrival.
2. Schedule: the scheduler forms the batch (``serve.core.scheduler``).
3. Cache (when a cache is configured): access the batch's distinct experts (layer by layer for slice units;
   resident keys first, see ``serve.core.expert_cache``) and count the slices each layer must load. Belady sees the
   future through a ``QueueLookahead``: the rest of this batch, then the pending work in service order. With
   ``lookahead_continuing``, the pending work also holds one guessed decode item per request of this batch that
   will keep decoding (see ``SimConfig``).
4. Prefetch (mode ``next``): load the predicted next batch's missing keys (``serve.core.prefetch``).
5. Cost: the iteration's duration from the cost model (compute, exposed transfers, link backlog).
6. Emit: every request in the batch gets a token at the iteration's end: a prefill its first token (TTFT), a
   decode its next one. A request that has all its tokens finishes; the others have their new token pre-gated
   and re-enter the scheduler at the next iteration.

Arrivals. Open loop (``SimConfig.concurrency`` None): each request arrives at its recorded ``arrival_s``.
Closed loop (``concurrency`` C): C clients replay the workload in its order, one request each at a time, as in
DeepSpeed-MII/FastGen and vLLM ``--max-concurrency`` benchmarks. The first C requests are issued at t = 0 and,
each time a request finishes, the next unissued one is issued at that completion time plus ``think_s``. The
recorded arrival times are ignored: the simulator re-stamps a copy of each spec with its issue time when it
releases it, so ``SimResult.requests[i].spec.arrival_s`` is the issue time and every metric (TTFT, TPOT,
normalized latency) is measured from it. At most C requests are in flight at any time.
"""

import dataclasses
import math
import numbers

from serve.sim.cache_replay import AccessStream
from serve.sim.cost_model import CostModel
from serve.core.expert_cache import CacheConfig, CacheCounters, ExpertCache
from serve.core.prefetch import check_mode, plan_prefetch, predict_next_experts
from serve.core.cache_policies import EXPECTED, LOOKAHEAD_POLICIES
from serve.core.lookahead import ExpectedLookahead, QueueLookahead
from serve.core.next_use import NextUseConfig
from serve.core.scheduler import Scheduler, SchedulerConfig
from serve.core.types import Request, RequestSpec, RequestState, ServeError


@dataclasses.dataclass(frozen=True, slots=True)
class SimConfig:
    """What to simulate.

    Attributes:
      scheduler: batching policy and budget.
      cost: cost model; its num_layers must match the cache's.
      cache: expert cache, or None when every expert stays resident (no transfers).
      prefetch: ``none``, ``layer`` or ``next`` (serve.core.prefetch).
      record_accesses: keep the per-iteration expert accesses (for offline cache replay).
      concurrency: None for open-loop arrivals (the recorded ``arrival_s``), or C closed-loop clients (module
        docstring, "Arrivals").
      think_s: closed loop only: seconds between a request's completion and the issue of the next one.
      lookahead_continuing: opt-in. The lookahead (Belady, and prefetch's eviction guard) also counts, for each
        request of the running batch that does not finish at this iteration, a one-token decode item on its
        current token's expert (a decode's pre-gated expert; a prefill's last prompt token's expert): a
        temporal-locality guess at the next token, which the router has not gated yet. It sits where the
        scheduler would put that token when it is submitted (``Scheduler.service_order(continuing)``). The
        prefetch planner's predicted next batch is unchanged. Default off: unknown next use = never.
      protect_batch: the running batch's experts are never evicted while it loads the others (the real
        engine's rule: a batch runs with all its experts resident). Needs ``scheduler.max_batch_experts`` <= the
        cache capacity, so that a batch always fits. Default off: a miss may evict a key the batch already used
        (an abstraction of the layer pipeline, see ``serve.core.expert_cache``).
    """

    scheduler: SchedulerConfig
    cost: CostModel
    cache: CacheConfig | None = None
    prefetch: str = "layer"
    record_accesses: bool = False
    concurrency: int | None = None
    think_s: float = 0.0
    lookahead_continuing: bool = False
    next_use: NextUseConfig | None = None  # belady-expected's forecast (None: NextUseConfig(), learned online)
    protect_batch: bool = False

    def __post_init__(self):
        check_mode(self.prefetch)
        if self.protect_batch:
            cap = self.scheduler.max_batch_experts
            if self.cache is None or self.cache.unit != "expert" or cap is None or cap > self.cache.capacity:
                raise ServeError("protect_batch needs an expert-unit cache and scheduler.max_batch_experts <= its "
                                 "capacity")
        check_concurrency(self.concurrency)
        if not isinstance(self.lookahead_continuing, bool):
            raise ServeError(f"lookahead_continuing={self.lookahead_continuing!r} must be a bool")
        if not (isinstance(self.think_s, numbers.Real) and self.think_s >= 0.0 and math.isfinite(self.think_s)):
            raise ServeError(f"think_s={self.think_s!r} must be finite and >= 0")
        if self.think_s and self.concurrency is None:
            raise ServeError(f"think_s={self.think_s!r} needs closed-loop clients (concurrency), not open loop")
        if self.cache is not None and self.cache.num_layers != self.cost.num_layers:
            raise ServeError(
                f"cache num_layers={self.cache.num_layers} differs from cost model num_layers={self.cost.num_layers}"
            )


def check_concurrency(concurrency) -> None:
    """None (open loop) or a positive int number of closed-loop clients; anything else raises ``ServeError``."""
    if concurrency is None:
        return
    if isinstance(concurrency, bool) or not isinstance(concurrency, numbers.Integral) or concurrency < 1:
        raise ServeError(f"concurrency={concurrency!r} must be a positive integer (closed-loop clients) or None")


@dataclasses.dataclass(slots=True)
class SimResult:
    """Everything a run produced; ``serve.core.metrics.summarize`` turns it into numbers."""

    requests: list[Request]
    batch_start_s: list[float]
    batch_duration_s: list[float]
    batch_tokens: list[int]
    batch_experts: list[int]
    batch_prefill: list[int]
    cache: CacheCounters | None
    stream: AccessStream | None
    batch_prefill_tokens: list[int] = dataclasses.field(default_factory=list)
    batch_admitted: list[int] = dataclasses.field(default_factory=list)  # prompts submitted since the last batch

    @property
    def num_iterations(self) -> int:
        return len(self.batch_tokens)


def _validate(specs, num_experts: int, check_order: bool = True, scheduler: SchedulerConfig | None = None):
    requests = []
    seen = set()
    previous = 0.0
    for index, spec in enumerate(specs):
        if spec.request_id in seen:
            raise ServeError(f"duplicate request id {spec.request_id!r}")
        seen.add(spec.request_id)
        if check_order and spec.arrival_s < previous:
            raise ServeError(
                f"request {spec.request_id!r}: arrival_s={spec.arrival_s} is earlier than the previous request's "
                f"{previous}; requests must be in arrival order"
            )
        previous = spec.arrival_s
        if spec.live:
            raise ServeError(f"request {spec.request_id!r} is live (its generated tokens are not known yet); the "
                             "simulator replays recorded requests only")
        low, high = spec.min_expert(), spec.max_expert()
        if low < 0 or high >= num_experts:
            bad = low if low < 0 else high
            raise ServeError(f"request {spec.request_id!r}: expert id {bad} out of range [0, {num_experts})")
        requests.append(Request(spec, index, scheduler.chunks(spec) if scheduler is not None else None))
    return requests


def simulate(specs: list[RequestSpec], num_experts: int, config: SimConfig, store=None,
             on_batch=None) -> SimResult:
    """Replay ``specs`` (in arrival order) to completion and return the per-request and per-iteration record.

    With ``config.concurrency`` set, the returned requests carry re-stamped copies of their specs (arrival_s =
    issue time); ``specs`` itself is not modified. ``store``: an ``ExpertStore`` told about every cache load and
    eviction; ``on_batch``: called with each batch when it is formed (both let the real engine's decisions be
    compared with the simulator's, ``serve.engine.replay``)."""
    closed = config.concurrency is not None
    requests = _validate(specs, num_experts, check_order=not closed, scheduler=config.scheduler)
    if config.cache is not None and config.cache.num_experts != num_experts:
        raise ServeError(f"cache num_experts={config.cache.num_experts} differs from the workload's {num_experts}")
    cost = config.cost
    cache = None
    if config.cache is not None:
        cache = ExpertCache.from_config(config.cache, cost.slice_bytes, store)
    slices = config.cache is not None and config.cache.unit == "slice"
    if slices and config.scheduler.prefer_resident:
        raise ServeError("prefer_resident needs an expert-unit cache (a slice cache holds layers of experts)")
    # Without a cache every expert is resident, so preferring resident experts changes nothing.
    scheduler = Scheduler(config.scheduler, num_experts,
                          resident=cache.resident if cache is not None else frozenset(range(num_experts)))
    num_layers = cost.num_layers
    # The lookahead is needed only by Belady and by speculative prefetch.
    wants_lookahead = cache is not None and (config.cache.policy in LOOKAHEAD_POLICIES or config.prefetch == "next")
    model = None
    if cache is not None and config.cache.policy == EXPECTED:
        model = (config.next_use or NextUseConfig()).model(num_experts)
    lookahead_items = config.cache.lookahead_items if config.cache is not None else None
    pipelined = config.prefetch != "none"
    continuing_mode = config.lookahead_continuing

    result = SimResult(requests, [], [], [], [], [], None, None)
    stream_experts, stream_known = [], []
    now = 0.0
    link_ready = 0.0  # link backlog at the start of the next iteration, relative to that start
    iteration = 0
    next_arrival = 0
    finished = 0
    carry = []  # requests whose next decode token (or next prefill chunk) is ready at the next iteration
    rechunked = False
    total = len(requests)
    # Requests released so far, in arrival order. Open loop: all of them. Closed loop: the first C, then one more
    # at each completion (completion times never decrease, so the list stays in arrival order).
    arrivals = requests
    issued = total
    think = config.think_s
    if closed:
        issued = min(config.concurrency, total)
        arrivals = requests[:issued]
        for request in arrivals:
            _issue(request, 0.0)
    protect = config.protect_batch
    admitted = 0  # prompts submitted since the last batch (the engine pre-gates each with one router call)
    while finished < total:
        if rechunked:  # step 1: carry holds decodes and, with chunked prefill, next chunks, in batch order
            for request in carry:
                if request.state is RequestState.QUEUED:
                    scheduler.submit(request, iteration)
                else:
                    scheduler.submit_decodes((request,), iteration)
            rechunked = False
        else:
            scheduler.submit_decodes(carry, iteration)
        carry = []
        while next_arrival < len(arrivals) and arrivals[next_arrival].spec.arrival_s <= now:
            scheduler.submit(arrivals[next_arrival], iteration)
            next_arrival += 1
            admitted += 1
        if not len(scheduler):
            gap = arrivals[next_arrival].spec.arrival_s - now
            link_ready = max(0.0, link_ready - gap)
            now = arrivals[next_arrival].spec.arrival_s
            continue

        batch = scheduler.next_batch(iteration)  # step 2
        if not batch.requests:
            raise RuntimeError(f"iteration {iteration}: empty batch with {len(scheduler)} items pending")
        if on_batch is not None:
            on_batch(batch)
        experts = batch.experts
        if config.record_accesses:
            stream_experts.append(experts)
            stream_known.append(_known_at(batch))

        missing = 0  # step 3
        if cache is not None:
            keys = [layer * num_experts + e for layer in range(num_layers) for e in experts] if slices else experts
            view = None
            if model is not None:
                model.observe(batch)
                view = ExpectedLookahead(keys, scheduler, num_experts, num_layers if slices else 1, lookahead_items,
                                         batch, model)
            elif wants_lookahead:
                continuing = _continuing_experts(batch) if continuing_mode else ()
                view = QueueLookahead(
                    keys, scheduler, num_experts, num_layers if slices else 1, lookahead_items, continuing
                )
            missing = _access_batch(cache, keys, view, len(experts), frozenset(keys) if protect else frozenset())
            if config.prefetch == "next":  # step 4
                link_ready += _prefetch_next(cache, scheduler, view, keys, cost, slices)

        prefill_tokens = sum(r.work_tokens for r in batch.requests if r.state is RequestState.PREFILL)
        duration, link_free = cost.step_s(batch.num_tokens, len(experts), missing, pipelined, link_ready,
                                          prefill_tokens, batch.num_prefill, admitted)  # step 5
        link_ready = max(0.0, link_free - duration)
        end = now + duration
        result.batch_start_s.append(now)
        result.batch_duration_s.append(duration)
        result.batch_tokens.append(batch.num_tokens)
        result.batch_experts.append(len(experts))
        result.batch_prefill.append(batch.num_prefill)
        result.batch_prefill_tokens.append(prefill_tokens)
        result.batch_admitted.append(admitted)
        admitted = 0

        for request in batch.requests:  # step 6
            if request.state is RequestState.PREFILL and not request.last_chunk:
                request.next_chunk()  # a non-final chunk emits nothing; the next one is queued
                carry.append(request)
                rechunked = True
                continue
            request.generated += 1
            if request.state is RequestState.PREFILL:
                request.first_token_s = end
                request.state = RequestState.DECODE
            if request.generated >= request.num_output:
                request.state = RequestState.FINISHED
                request.finish_s = end
                finished += 1
                if issued < total:  # closed loop: this client sends its next request
                    _issue(requests[issued], end + think)
                    arrivals.append(requests[issued])
                    issued += 1
            else:
                request.reveal_next_expert()
                carry.append(request)
        now = end
        iteration += 1

    result.cache = cache.counters if cache is not None else None
    if config.record_accesses:
        result.stream = AccessStream(num_experts, tuple(stream_experts), tuple(stream_known))
    return result


def _issue(request: Request, time_s: float) -> None:
    """Closed loop: issue ``request`` at ``time_s`` (a re-stamped copy of its spec; the input stays as it was)."""
    request.spec = dataclasses.replace(request.spec, arrival_s=time_s)
    request.ready_s = time_s


def _continuing_experts(batch) -> list[int]:
    """``lookahead_continuing``: for each request of ``batch`` that will not finish at this iteration (step 6
    finishes it when ``generated + 1 >= num_output``), in batch order (the order step 6 re-submits them), the
    expert its next token is guessed to use: its current token's expert (a prefill's last prompt token)."""
    experts = []
    for request in batch.requests:
        if request.state is RequestState.PREFILL and not request.last_chunk:
            continue  # its next item is a prefill chunk, known exactly once it is queued
        if request.generated + 1 < request.num_output:
            if request.state is RequestState.PREFILL:
                experts.append(request.spec.prompt_experts[-1])
            else:
                experts.append(request.queue_expert)
    return experts


def _known_at(batch) -> tuple[int, ...]:
    """For each expert of the batch, the earliest iteration at which one of its tokens was pre-gated."""
    first = {}
    for request in batch.requests:
        for expert in request.work_experts:
            ready = request.ready_iteration
            if ready < first.get(expert, ready + 1):
                first[expert] = ready
    return tuple(first[e] for e in batch.experts)


def _access_batch(cache, keys, view, layer_width: int, protect=frozenset()):
    """Step 3: access the batch's keys, one group per layer for slices; returns the missing slices per layer
    (one int for whole experts, whose misses load every layer)."""
    missing = []
    for start in range(0, len(keys), layer_width):
        if view is not None:
            view.move_to(start + layer_width - 1)
            hits = cache.access_batch(keys[start : start + layer_width], view, protect)
        else:
            hits = cache.access_batch(keys[start : start + layer_width], protect=protect)
        missing.append(layer_width - sum(hits))
    return missing[0] if layer_width == len(keys) else missing


def _prefetch_next(cache, scheduler, view, keys, cost, slices: bool) -> float:
    """Step 4: load the predicted next batch's missing keys; returns the seconds they add to the link."""
    limits = scheduler.config
    predicted = predict_next_experts(scheduler.service_order(), limits.max_batch_tokens, limits.max_batch_requests,
                                     limits.max_batch_experts)
    protect = frozenset(keys)  # in use by the running batch
    loaded = 0
    for key in plan_prefetch(predicted, cache.resident):
        loaded += cache.prefetch(key, view, protect)
    per_key = cost.slice_transfer_s * (1 if slices else cost.num_layers)
    return loaded * per_key
