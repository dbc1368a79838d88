"""Plain data shared by the serving core: request specs, live requests, batches.

Everything here is pure Python over ints and floats (no jax), so the scheduler, the cache policies and the
simulator can be tested without a device.

Lifecycle of one request (one expert per token, the same expert in every layer):

1. A ``RequestSpec`` arrives at ``arrival_s`` with its prompt already pre-gated: the router, which reads only
   token ids, has given every prompt token an expert id (``prompt_experts``).
2. The ``Request`` is QUEUED with one pending work item, its prefill (all prompt tokens, as one unit: attention
   couples them, so they cannot be split by expert).
3. When a batch runs the prefill, the request enters PREFILL, and at the end of that batch it emits its first
   generated token. That token is pre-gated at once (``reveal_next_expert``) and the request becomes DECODE with
   one pending work item: that single token.
4. Each decode step processes the newest generated token with its pre-gated expert and emits the next one, which
   is pre-gated in turn. After ``num_output_tokens`` generated tokens the request is FINISHED.

``output_experts[j]`` is the router's expert for generated token j. A request generating M tokens runs one
prefill and M - 1 decode steps, so ``output_experts[M - 1]`` (the last token's expert) is never executed; it is
kept because a recorded trace has it and a longer generation would use it.
"""

import dataclasses
import enum
from collections import Counter

from readme_jax.errors import ReadmeJaxError


class ServeError(ReadmeJaxError, ValueError):
    """Bad serving input (a config value, a trace line, a request); the message names the value."""


class RequestState(enum.Enum):
    QUEUED = "queued"
    PREFILL = "prefill"
    DECODE = "decode"
    FINISHED = "finished"


@dataclasses.dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request as recorded in a workload or trace (immutable input of the simulator).

    Attributes:
      request_id: unique name.
      arrival_s: arrival time in seconds from the start of the trace.
      prompt_experts: pre-gated expert id of every prompt token.
      output_experts: expert id of every generated token (its length is the number of generated tokens).
      max_new_tokens: the generation limit the client asked for (>= len(output_experts)).
      prompt_ids: prompt token ids when known (real routing traces); None for synthetic workloads.
      output_ids: generated token ids when known; None otherwise.
      meta: free-form JSON-compatible annotations (e.g. the text's domain), carried through traces unchanged.
      live: a request served by the real engine, whose generated tokens (and their experts) are not known in
        advance: ``output_experts`` starts empty and the engine records the real ones when it finishes. The
        simulator refuses live specs (it needs the whole future).
    """

    request_id: str
    arrival_s: float
    prompt_experts: tuple[int, ...]
    output_experts: tuple[int, ...]
    max_new_tokens: int
    prompt_ids: tuple[int, ...] | None = None
    output_ids: tuple[int, ...] | None = None
    meta: dict | None = None
    live: bool = False

    def __post_init__(self):
        if not self.prompt_experts:
            raise ServeError(f"request {self.request_id!r}: empty prompt_experts")
        if not self.output_experts and not self.live:
            raise ServeError(f"request {self.request_id!r}: empty output_experts (at least one generated token)")
        if not self.arrival_s >= 0.0 or self.arrival_s == float("inf"):
            raise ServeError(f"request {self.request_id!r}: arrival_s={self.arrival_s} must be finite and >= 0")
        if len(self.output_experts) > self.max_new_tokens:
            raise ServeError(
                f"request {self.request_id!r}: {len(self.output_experts)} generated tokens exceed "
                f"max_new_tokens={self.max_new_tokens}"
            )
        for ids, experts in (("prompt", self.prompt_experts), ("output", self.output_experts)):
            values = getattr(self, f"{ids}_ids")
            if values is not None and len(values) != len(experts):
                raise ServeError(
                    f"request {self.request_id!r}: len({ids}_ids)={len(values)} != len({ids}_experts)={len(experts)}"
                )

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_experts)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_experts)

    def max_expert(self) -> int:
        """Largest expert id used anywhere in the request (for range checks)."""
        return max(self.prompt_experts + self.output_experts)

    def min_expert(self) -> int:
        return min(self.prompt_experts + self.output_experts)


def prefill_chunks(prompt_experts, max_experts: int | None = None, max_tokens: int | None = None):
    """Split a prompt into consecutive chunks ``(start, end)`` that each touch at most ``max_experts`` distinct
    experts and hold at most ``max_tokens`` tokens (None: no limit); greedy, so the chunks are as long as the
    limits allow. Chunked prefill runs each chunk over the KV cache of the ones before it, so a prompt whose
    tokens need more experts than the device holds is served in several iterations instead of being refused."""
    chunks = []
    start = 0
    experts = set()
    for i, expert in enumerate(prompt_experts):
        grows = expert not in experts
        if (max_experts is not None and grows and len(experts) == max_experts) or (
            max_tokens is not None and i - start == max_tokens
        ):
            chunks.append((start, i))
            start, experts = i, set()
        experts.add(expert)
    chunks.append((start, len(prompt_experts)))
    return tuple(chunks)


class Request:
    """A live request inside the scheduler: its state and its one pending work item.

    The pending work item is either the prefill (``work_tokens = prompt_len``, touching ``work_experts``, the
    prompt's distinct experts) or one decode token (``work_tokens = 1``, touching ``next_expert``).
    ``queue_expert`` is the per-expert queue the item belongs to in expert-aware batching.
    """

    __slots__ = (
        "spec",
        "index",
        "state",
        "generated",
        "num_output",
        "work_tokens",
        "work_experts",
        "queue_expert",
        "ready_iteration",
        "ready_s",
        "first_token_s",
        "finish_s",
        "max_wait",
        "total_wait",
        "chunks",
        "chunk",
    )

    def __init__(self, spec: RequestSpec, index: int, chunks=None):
        self.spec = spec
        self.index = index  # position in the workload; ties are broken by it
        self.state = RequestState.QUEUED
        self.generated = 0
        self.num_output = spec.max_new_tokens if spec.live else spec.num_output_tokens
        # The prefill's chunks (``prefill_chunks``); one chunk, the whole prompt, unless a cap splits it.
        self.chunks = chunks or ((0, spec.prompt_len),)
        self.chunk = 0
        self._prefill_work()
        self.ready_iteration = 0
        self.ready_s = spec.arrival_s
        self.first_token_s = None
        self.finish_s = None
        # Iterations the request's work items waited between becoming ready and being scheduled.
        self.max_wait = 0
        self.total_wait = 0

    def _prefill_work(self) -> None:
        start, end = self.chunks[self.chunk]
        counts = Counter(self.spec.prompt_experts[start:end])
        self.work_tokens = end - start
        self.work_experts = tuple(sorted(counts))
        # A prefill is queued under its most frequent prompt expert (lowest id on ties): the autoregressive
        # router makes a prompt's tokens favour one or a few experts (paper section 6.5).
        self.queue_expert = min(counts, key=lambda e: (-counts[e], e))

    @property
    def last_chunk(self) -> bool:
        """Whether the pending prefill chunk is the prompt's last (the one that emits the first token)."""
        return self.chunk == len(self.chunks) - 1

    def next_chunk(self) -> None:
        """After a non-final chunk ran: the next chunk becomes the pending work item (queued again)."""
        self.chunk += 1
        self.state = RequestState.QUEUED
        self._prefill_work()

    @property
    def next_expert(self) -> int:
        """Expert of the pending decode token (valid in DECODE)."""
        return self.spec.output_experts[self.generated - 1]

    def reveal_next_expert(self) -> int:
        """Pre-gate the newest generated token and make it the pending work item."""
        expert = self.spec.output_experts[self.generated - 1]
        self.work_tokens = 1
        self.work_experts = (expert,)
        self.queue_expert = expert
        return expert

    def __repr__(self) -> str:
        return f"Request({self.spec.request_id!r}, {self.state.value}, generated={self.generated})"


@dataclasses.dataclass(frozen=True, slots=True)
class Batch:
    """One iteration's work: the requests it runs and the experts it touches.

    Attributes:
      iteration: index of the iteration (0-based).
      requests: the requests whose pending item runs, in scheduling order.
      num_tokens: prefill tokens plus one per decode request.
      experts: the distinct experts touched, ascending.
      num_prefill: how many of the requests are prefills.
      num_forced: how many were taken by the starvation bound ahead of the policy.
    """

    iteration: int
    requests: tuple[Request, ...]
    num_tokens: int
    experts: tuple[int, ...]
    num_prefill: int
    num_forced: int = 0
