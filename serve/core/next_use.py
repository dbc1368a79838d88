"""Expert-transition statistics and the expected time of an expert's next use (policy ``belady-expected``).

Belady needs every key's next use. A pre-gating server knows the pending work exactly, but a live request's
next token is gated only after the current one runs, so "no pending work" does not mean "never needed again".
This module supplies what is missing: for each live request, a distribution over the experts of its next few
tokens, from first-order expert-transition statistics.

1. ``TransitionStats``: counts[a][b] = how often a token on expert b follows a token on expert a within a
   request, plus generated tokens and finished requests (the chance that a request stops after a token).
   Estimated from a trace slice (``estimate_transitions``) or a file, or learned online (``OnlineTransitions``,
   from served tokens only).
2. ``Forecast``: from the smoothed transition matrix P and the stop chance s, for each current expert c and each
   k = 1..H the hazard ``q[c][k-1][x]``: the chance that the request's k-th next token runs and is on x, given
   that none of its tokens 1..k-1 ran on x. (First-visit probabilities f_k = (1 - s)^k * P(X_k = x, X_j != x
   for j < k), from the taboo recursion f_1 = P[c][x], f_k(c) = sum over j != x of P[c][j] f_{k-1}(j); then
   q_k = f_k / (1 - f_1 - ... - f_{k-1}).) The survival product over k is then exact for one request.
3. ``expected_first_use``: requests are treated as independent. Given the exactly known next use T (in
   iterations from now, ``inf`` when none) and predicted events (t_i, survival s_i) sorted by time, the expected
   first use is sum_i t_i (1 - s_i) S_{i-1} + T' S_n, where S_i is the product of the first i survivals and T' is
   T, or a far horizon when T is ``inf``. Events at or after T are dropped by the caller. With no events this is
   T itself: when the whole future is known the policy ranks exactly as Belady does.

Pure Python over ints and floats (no jax, no numpy).
"""

import dataclasses
import math

from serve.core.types import RequestState, ServeError

STATS_FORMAT = "readme-jax-transition-stats"
STATS_VERSION = 1
DEFAULT_TOKENS_AHEAD = 2
SMOOTHING = 0.5  # additive pseudo-count per transition: unseen transitions keep a small probability


@dataclasses.dataclass(frozen=True, slots=True)
class TransitionStats:
    """Counts behind a forecast (step 1 of the module docstring).

    Attributes:
      num_experts: E.
      counts: E x E; counts[a][b] = tokens on b that directly follow a token on a in the same request.
      tokens: generated tokens counted (a request generating M tokens contributes M).
      finishes: requests counted as finished (each after its last generated token).
    """

    num_experts: int
    counts: tuple[tuple[int, ...], ...]
    tokens: int = 0
    finishes: int = 0

    def __post_init__(self):
        if not _is_int(self.num_experts) or self.num_experts < 1:
            raise ServeError(f"transition statistics: num_experts={self.num_experts!r} must be a positive integer")
        if len(self.counts) != self.num_experts or any(len(row) != self.num_experts for row in self.counts):
            raise ServeError(
                f"transition statistics: counts must be {self.num_experts} x {self.num_experts} "
                f"(num_experts={self.num_experts})"
            )
        for a, row in enumerate(self.counts):
            for b, value in enumerate(row):
                if not _is_int(value) or value < 0:
                    raise ServeError(f"transition statistics: counts[{a}][{b}]={value!r} is not an integer >= 0")
        for name in ("tokens", "finishes"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ServeError(f"transition statistics: {name}={value!r} is not an integer >= 0")
        if self.finishes > self.tokens:
            raise ServeError(f"transition statistics: finishes={self.finishes} exceed tokens={self.tokens}")

    def matrix(self) -> list[list[float]]:
        """Row-stochastic P with ``SMOOTHING`` added to every count."""
        rows = []
        for row in self.counts:
            total = sum(row) + SMOOTHING * self.num_experts
            rows.append([(value + SMOOTHING) / total for value in row])
        return rows

    def stop_probability(self) -> float:
        """Chance that a request stops after a generated token (smoothed: 1/2 with no data)."""
        return (self.finishes + 1) / (self.tokens + 2)

    def repeat_rate(self) -> float:
        """Share of counted transitions that stay on the same expert (nan without any)."""
        total = sum(map(sum, self.counts))
        return sum(self.counts[e][e] for e in range(self.num_experts)) / total if total else math.nan

    def check_experts(self, num_experts: int, where: str = "transition statistics") -> None:
        if self.num_experts != num_experts:
            raise ServeError(
                f"{where} are for {self.num_experts} experts, but the workload has {num_experts}"
            )

    def to_json(self, source: dict | None = None) -> dict:
        out = {
            "format": STATS_FORMAT,
            "version": STATS_VERSION,
            "num_experts": self.num_experts,
            "counts": [list(row) for row in self.counts],
            "tokens": self.tokens,
            "finishes": self.finishes,
        }
        if source is not None:
            out["source"] = source
        return out


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def stats_from_json(obj, where: str) -> TransitionStats:
    """Parse ``TransitionStats.to_json`` output; anything malformed raises ``ServeError`` naming ``where``."""
    if not isinstance(obj, dict):
        raise ServeError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if obj.get("format") != STATS_FORMAT:
        raise ServeError(f"{where}: format={obj.get('format')!r}, expected {STATS_FORMAT!r}")
    if obj.get("version") != STATS_VERSION:
        raise ServeError(f"{where}: unsupported version {obj.get('version')!r} (this reader knows {STATS_VERSION})")
    for key in ("num_experts", "counts", "tokens", "finishes"):
        if key not in obj:
            raise ServeError(f"{where}: missing field {key!r}")
    unknown = sorted(set(obj) - {"format", "version", "num_experts", "counts", "tokens", "finishes", "source"})
    if unknown:
        raise ServeError(f"{where}: unknown field {unknown[0]!r}")
    counts = obj["counts"]
    if not isinstance(counts, list) or not all(isinstance(row, list) for row in counts):
        raise ServeError(f"{where}: counts must be a list of lists of integers")
    try:
        return TransitionStats(obj["num_experts"], tuple(tuple(row) for row in counts), obj["tokens"], obj["finishes"])
    except ServeError as exc:
        raise ServeError(f"{where}: {exc}") from None


def estimate_transitions(specs, num_experts: int) -> TransitionStats:
    """Counts over recorded requests: every consecutive pair of their prompt-then-output experts, every
    generated token, one finish per request."""
    counts = [[0] * num_experts for _ in range(num_experts)]
    tokens = 0
    for spec in specs:
        sequence = spec.prompt_experts + spec.output_experts
        if max(sequence) >= num_experts or min(sequence) < 0:
            raise ServeError(f"request {spec.request_id!r}: an expert id lies outside [0, {num_experts})")
        for a, b in zip(sequence, sequence[1:]):
            counts[a][b] += 1
        tokens += len(spec.output_experts)
    return TransitionStats(num_experts, tuple(map(tuple, counts)), tokens, len(specs))


class Forecast:
    """Step 2: per-token hazards q[c][k][x] for k = 0..H-1 (the (k+1)-th next token) from ``TransitionStats``."""

    def __init__(self, stats: TransitionStats, tokens_ahead: int):
        self.num_experts = stats.num_experts
        self.tokens_ahead = tokens_ahead
        p = stats.matrix()
        go = 1.0 - stats.stop_probability()
        num = self.num_experts
        experts = range(num)
        # first[x][c]: chance that token k is the first on x (and that the request ran that far), for the current k.
        first = [[go * p[c][x] for c in experts] for x in experts]
        seen = [row[:] for row in first]  # chance of a visit to x among tokens 1..k
        hazard = [[[0.0] * num for _ in range(tokens_ahead)] for _ in experts]
        for k in range(tokens_ahead):
            for x in experts:
                for c in experts:
                    before = seen[x][c] - first[x][c]
                    hazard[c][k][x] = first[x][c] / (1.0 - before) if before < 1.0 else 0.0
            if k + 1 == tokens_ahead:
                break
            for x in experts:
                step = [go * sum(p[c][j] * first[x][j] for j in experts if j != x) for c in experts]
                first[x] = step
                seen[x] = [s + f for s, f in zip(seen[x], step)]
        self.hazard = hazard
        self.matrix = p
        self.go = go
        # log(1 - q): survivals multiply, so the lookahead adds these (0.0 where q is 0; q < 1 by smoothing).
        self.log_miss = [[[math.log1p(-q) if q else 0.0 for q in row] for row in per_c] for per_c in hazard]
        self.likely = [max(experts, key=lambda x: (p[c][x], -x)) for c in experts]  # likeliest next expert

@dataclasses.dataclass(frozen=True, slots=True)
class NextUseConfig:
    """How ``belady-expected`` forecasts.

    Attributes:
      stats: statistics to start from (a file, or another slice of the trace); None: start from nothing.
      online: also learn from the tokens served (``TransitionModel``); must be True when ``stats`` is None.
      tokens_ahead: H, the next tokens forecast for each live request.
    """

    stats: TransitionStats | None = None
    online: bool = True
    tokens_ahead: int = DEFAULT_TOKENS_AHEAD

    def __post_init__(self):
        if not _is_int(self.tokens_ahead) or not 1 <= self.tokens_ahead <= 16:
            raise ServeError(f"tokens_ahead={self.tokens_ahead!r} must be an integer in [1, 16]")
        if not isinstance(self.online, bool):
            raise ServeError(f"online={self.online!r} must be a bool")
        if self.stats is None and not self.online:
            raise ServeError("fixed transition statistics (online=False) need stats: a file or a trace slice")

    def model(self, num_experts: int) -> "TransitionModel":
        """A fresh model for a workload of ``num_experts`` (a mismatch with ``stats`` raises ``ServeError``)."""
        return TransitionModel(num_experts, self.tokens_ahead, self.stats, self.online)


class TransitionModel:
    """The statistics a live server forecasts with, plus the mean number of items per batch.

    ``online``: learn from the tokens served so far (``observe`` each batch), starting from ``prior`` (or from
    nothing). A request's current token is pre-gated before it runs, so the transition into it is known when its
    batch runs; a finish is counted only once the request is seen FINISHED after its last batch. The forecast is
    rebuilt every ``refresh`` batches, which keeps the cost per iteration small. Not online: ``prior`` stays
    fixed (a file, or another slice of the trace). Deterministic either way.
    """

    def __init__(self, num_experts: int, tokens_ahead: int = DEFAULT_TOKENS_AHEAD, prior: TransitionStats | None = None,
                 online: bool = True, refresh: int = 64):
        if not _is_int(tokens_ahead) or tokens_ahead < 1:
            raise ServeError(f"tokens_ahead={tokens_ahead!r} must be a positive integer")
        if prior is not None:
            prior.check_experts(num_experts)
        elif not online:
            raise ServeError("fixed transition statistics need a prior (a statistics file or a trace slice)")
        else:
            prior = TransitionStats(num_experts, tuple((0,) * num_experts for _ in range(num_experts)))
        self._counts = [list(row) for row in prior.counts]
        self._tokens = prior.tokens
        self._finishes = prior.finishes
        self._last = {}  # request index -> expert of its latest served token
        self._running = ()
        self._online = online
        self._refresh = refresh
        self._age = 0
        self.num_experts = num_experts
        self.tokens_ahead = tokens_ahead
        self.forecast = Forecast(prior, tokens_ahead)
        self.rollouts = {}  # serve.core.lookahead's memo of rollouts under this forecast
        self.items_per_batch = 1.0  # running mean of work items per batch (sets the forecast's time scale)
        self._batches = 0

    def stats(self) -> TransitionStats:
        return TransitionStats(self.num_experts, tuple(map(tuple, self._counts)), self._tokens, self._finishes)

    def observe(self, batch) -> None:
        """Called once per batch, before it runs: its size, and (online) the transitions into its tokens and
        the finishes of the previous batch."""
        self._batches += 1
        self.items_per_batch += (len(batch.requests) - self.items_per_batch) / min(self._batches, 256)
        if not self._online:
            return
        last = self._last
        for request in self._running:
            if request.state is RequestState.FINISHED:
                self._finishes += 1
                last.pop(request.index, None)
        counts = self._counts
        for request in batch.requests:
            if request.state is RequestState.PREFILL:
                prompt = request.spec.prompt_experts
                for a, b in zip(prompt, prompt[1:]):
                    counts[a][b] += 1
                last[request.index] = prompt[-1]
            else:
                expert = request.queue_expert
                counts[last[request.index]][expert] += 1
                last[request.index] = expert
        self._tokens += len(batch.requests)  # each request of the batch emits one generated token
        self._running = batch.requests
        self._age += 1
        if self._age >= self._refresh:
            self._age = 0
            self.forecast = Forecast(self.stats(), self.tokens_ahead)
            self.rollouts = {}


def expected_first_use(known: float, events, far: float) -> float:
    """Step 3: expected first use given the known next use and (time, survival) events sorted by time, all
    before ``known``; ``far`` stands in for an unknown use beyond every event. With no events: ``known``."""
    if not events:
        return known
    alive = 1.0
    total = 0.0
    for time, survive in events:
        total += time * (1.0 - survive) * alive
        alive *= survive
    return total + (known if known != math.inf else far) * alive
