"""The engine's per-request objects: token events, live scheduler requests and the run record."""

import dataclasses

from readme_jax.generate import SamplingParams
from serve.core.types import Request, RequestSpec


@dataclasses.dataclass
class TokenEvent:
    """One generated token (or the end of a request) as ``Engine.step`` reports it.

    ``finish_reason``: "stop" (an EOS token, included as ``token_id``), "length" (``max_new_tokens``), "abort",
    or "error" (with ``error``, the message); None while the request runs. ``expert``: the router's expert for
    ``token_id`` (the expert its decode step will use).
    """

    request_id: str
    token_id: int | None
    finished: bool
    finish_reason: str | None = None
    error: str | None = None
    expert: int | None = None


class LiveRequest(Request):
    """A scheduler request whose next expert comes from the router at run time, not from a recorded trace."""

    __slots__ = ("experts_out",)

    def __init__(self, spec: RequestSpec, index: int, chunks=None):
        super().__init__(spec, index, chunks)
        self.experts_out: list[int] = []  # the router's expert of each generated token

    @property
    def next_expert(self) -> int:
        return self.experts_out[self.generated - 1]

    def reveal_next_expert(self) -> int:
        expert = self.experts_out[self.generated - 1]
        self.work_tokens = 1
        self.work_experts = (expert,)
        self.queue_expert = expert
        return expert


@dataclasses.dataclass(eq=False)
class Sequence:
    """What the engine keeps for one request: its prompt, sampling, KV row and output so far.

    ``forced``: teacher forcing; the recorded spec whose tokens and experts replace the sampled ones (the
    engine then executes exactly the trace the simulator replays).
    """

    request_id: str
    prompt: list[int]
    params: SamplingParams
    arrival_s: float
    index: int
    forced: RequestSpec | None = None
    row: int = -1
    request: Request | None = None
    out: list[int] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None


@dataclasses.dataclass
class EngineRecord:
    """A run of the real engine, in ``serve.sim.simulate.SimResult``'s shape (``serve.core.metrics.summarize``
    reads both), plus what only a real run has: per-iteration stall and host seconds, the requests of every
    batch, and the slot store's log of loads and evictions."""

    requests: list = dataclasses.field(default_factory=list)
    batch_start_s: list = dataclasses.field(default_factory=list)
    batch_duration_s: list = dataclasses.field(default_factory=list)
    batch_tokens: list = dataclasses.field(default_factory=list)
    batch_experts: list = dataclasses.field(default_factory=list)
    batch_prefill: list = dataclasses.field(default_factory=list)
    batch_prefill_tokens: list = dataclasses.field(default_factory=list)
    batch_admitted: list = dataclasses.field(default_factory=list)
    cache: object = None
    stream: object = None
    batch_stall_s: list = dataclasses.field(default_factory=list)
    batch_host_s: list = dataclasses.field(default_factory=list)
    batch_requests: list = dataclasses.field(default_factory=list)
    log: list = dataclasses.field(default_factory=list)

    @property
    def num_iterations(self) -> int:
        return len(self.batch_tokens)
