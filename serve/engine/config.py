"""The engine's settings, checked before any work (a bad value is one clear error that names it)."""

import dataclasses

from serve.core.cache_policies import POLICY_NAMES
from serve.core.scheduler import POLICIES, check_prefer_resident
from serve.core.types import ServeError

ENGINE_PREFETCH = ("none", "next")  # whole-expert slots: "layer" (per-layer streaming) has no meaning here


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Attributes:
      slots: C device slots for routed experts (None: every expert resident); 1 <= C <= E.
      cache_policy: which expert a full cache evicts (``serve.core.cache_policies``).
      batching: the scheduler policy (``serve.core.scheduler.POLICIES``).
      max_seqs: live sequences (KV cache rows); more requests wait, in order, for a row.
      prefetch: ``next`` loads the predicted next batch's experts right after the running step is dispatched;
        ``none`` loads on demand only.
      max_batch_tokens: tokens per iteration (prefill chunks plus one per decode).
      max_wait_iterations: the scheduler's starvation bound (None: off).
      max_context: cache slots per sequence (prompt + generated tokens), at most the model's (and router's)
        context.
      lookahead_items: pending items Belady's lookahead scans.
      max_batch_experts: distinct experts one batch may touch (None: C, the most the slots allow). Below C,
        the slots the batch does not need give the eviction policy a choice on every miss.
      seed: the random policy's seed.
      prefer_resident: expert-aware batching only: a resident expert's queue counts as (1 + w) times its tokens
        when the scheduler picks the next queue (``serve.core.scheduler``); 0 is the paper's Algorithm 1.
      transition_stats: cache policy ``belady-expected`` only: a statistics file (``readme-jax
        transition-stats``) its forecast starts from; it keeps learning from the tokens served. None: it learns
        from nothing. Read (and checked) when the config is made.
    """

    slots: int | None = None
    cache_policy: str = "belady"
    batching: str = "expert-aware"
    max_seqs: int = 16
    prefetch: str = "next"
    max_batch_tokens: int = 256
    max_wait_iterations: int | None = 64
    max_context: int = 2048
    lookahead_items: int | None = 1024
    seed: int = 0
    max_batch_experts: int | None = None
    prefer_resident: float = 0.0
    transition_stats: str | None = None

    def __post_init__(self):
        if self.cache_policy not in POLICY_NAMES:
            raise ServeError(f"unknown cache policy {self.cache_policy!r}; choose one of {', '.join(POLICY_NAMES)}")
        if self.batching not in POLICIES:
            raise ServeError(f"unknown batching policy {self.batching!r}; choose one of {', '.join(POLICIES)}")
        if self.prefetch not in ENGINE_PREFETCH:
            raise ServeError(f"unknown engine prefetch mode {self.prefetch!r}; choose one of "
                             f"{', '.join(ENGINE_PREFETCH)}")
        for name in ("max_seqs", "max_batch_tokens", "max_context"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ServeError(f"{name}={value!r} must be a positive integer")
        check_prefer_resident(self.prefer_resident, self.batching)
        if self.slots is not None and (isinstance(self.slots, bool) or not isinstance(self.slots, int)):
            raise ServeError(f"slots={self.slots!r} must be an integer (device expert slots) or None")
        if self.transition_stats is not None:
            self.read_transition_stats()  # a missing or malformed file: an error naming it, before any work

    def read_transition_stats(self):
        """The ``transition_stats`` file's statistics (None when unset)."""
        if self.transition_stats is None:
            return None
        from serve.sim.transition_stats import read_stats

        return read_stats(self.transition_stats)

    def check_slots(self, num_experts: int) -> int:
        """C for a model of ``num_experts`` experts."""
        slots = num_experts if self.slots is None else self.slots
        if not 1 <= slots <= num_experts:
            raise ServeError(f"slots={slots} must be between 1 and the model's {num_experts} experts")
        cap = self.max_batch_experts
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= slots):
            raise ServeError(f"max_batch_experts={cap!r} must be between 1 and slots={slots}")
        return slots
