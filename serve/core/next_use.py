"""Expert-transition statistics and the expected time of an expert's next use (policy ``belady-expected``).

Belady needs every key's next use. A pre-gating server knows the pending work exactly, but a live request's
next token is gated only after the current one runs, so "no pending work" does not mean "never needed again".
This module supplies what is missing: for each live request, a distribution over the experts of its next few
tokens, from expert-transition statistics conditioned on the request's current expert and on its *home*.

1. ``TransitionStats``: counts[a][b] = how often a token on expert b follows a token on expert a within a
   request, plus generated tokens and finished requests (the chance that a request stops after a token), and
   home_counts[h][a][b], the same transitions split by the request's home expert h when a ran: the most
   frequent expert among its last ``HOME_WINDOW`` tokens (``serve.core.home``: "the next token is on the home"
   is right for 77.8% of the demo trace's transitions, "it stays on the current expert" for 73.2%). They live
   in ``serve.core.transitions``: estimated from a trace slice (``estimate_transitions``) or read from a file;
   or learned online here (``TransitionModel``, from served tokens only).
2. ``Forecast``: from the smoothed transition matrix P and the stop chance s, for each current expert c and each
   k = 1..H the hazard ``q[c][k-1][x]``: the chance that the request's k-th next token runs and is on x, given
   that none of its tokens 1..k-1 ran on x. (First-visit probabilities f_k = (1 - s)^k * P(X_k = x, X_j != x
   for j < k), from the taboo recursion f_1 = P[c][x], f_k(c) = sum over j != x of P[c][j] f_{k-1}(j); then
   q_k = f_k / (1 - f_1 - ... - f_{k-1}).) The survival product over k is then exact for one request.
   A *context* names the chain a request is on: ``c`` (< E) is expert c with the home unknown (P), and
   ``E + h * E + c`` is expert c with home h (P_h: home_counts[h] smoothed towards P with ``HOME_PRIOR``
   pseudo-counts; the home is held fixed over the H tokens). ``Forecast.rows`` and ``Forecast.context_log_miss``
   serve both kinds.
3. ``expected_first_use``: requests are treated as independent. Given the exactly known next use T (in
   iterations from now, ``inf`` when none) and predicted events (t_i, survival s_i) sorted by time, the expected
   first use is sum_i t_i (1 - s_i) S_{i-1} + T' S_n, where S_i is the product of the first i survivals and T' is
   T, or a far horizon when T is ``inf``. Events at or after T are dropped by the caller. With no events this is
   T itself: when the whole future is known the policy ranks exactly as Belady does.

Pure Python over ints and floats (no jax, no numpy).
"""

import dataclasses
import math

from serve.core.home import RecentExperts, count_transitions, home_of, window_home
from serve.core.transitions import TransitionStats, is_int
from serve.core.types import RequestState, ServeError

DEFAULT_TOKENS_AHEAD = 2


class Forecast:
    """Step 2: per-token hazards q[c][k][x] for k = 0..H-1 (the (k+1)-th next token) from ``TransitionStats``,
    for the first-order chain (``hazard``, ``log_miss``, ``matrix``) and, on demand, for every home's chain
    (``context_log_miss``, ``row``)."""

    def __init__(self, stats: TransitionStats, tokens_ahead: int):
        self.num_experts = stats.num_experts
        self.tokens_ahead = tokens_ahead
        p = stats.matrix()
        self.go = 1.0 - stats.stop_probability()
        self.matrix = p
        self.hazard = self._hazards(p)
        # log(1 - q): survivals multiply, so the lookahead adds these (0.0 where q is 0; q < 1 by smoothing).
        self.log_miss = _log_miss(self.hazard)
        # row(context): the next token's distribution; contexts E + h * E + c use home h's matrix.
        self.rows = list(p)
        self._homes = stats.home_matrices()
        for matrix in self._homes:
            self.rows.extend(matrix)
        self.likely = [max(range(len(row)), key=lambda e: (row[e], -e)) for row in self.rows]  # argmax per context
        # log(1 - q) per context, [k][x]; a home's chain is built on its first use (E chains of E^3 work each).
        self.context_tables = self.log_miss + [None] * (self.num_experts * self.num_experts)

    def context_log_miss(self, context: int):
        """log(1 - q) per token ahead and expert, [k][x], for a context (module step 2)."""
        table = self.context_tables[context]
        if table is None:
            num = self.num_experts
            home = (context - num) // num
            chain = _log_miss(self._hazards(self._homes[home]))
            self.context_tables[num + home * num : num + (home + 1) * num] = chain
            table = self.context_tables[context]
        return table

    def _hazards(self, p):
        go = self.go
        num = self.num_experts
        experts = range(num)
        # first[x][c]: chance that token k is the first on x (and that the request ran that far), for the current k.
        first = [[go * p[c][x] for c in experts] for x in experts]
        seen = [row[:] for row in first]  # chance of a visit to x among tokens 1..k
        hazard = [[[0.0] * num for _ in range(self.tokens_ahead)] for _ in experts]
        for k in range(self.tokens_ahead):
            for x in experts:
                for c in experts:
                    before = seen[x][c] - first[x][c]
                    hazard[c][k][x] = first[x][c] / (1.0 - before) if before < 1.0 else 0.0
            if k + 1 == self.tokens_ahead:
                break
            for x in experts:
                step = [go * sum(p[c][j] * first[x][j] for j in experts if j != x) for c in experts]
                first[x] = step
                seen[x] = [s + f for s, f in zip(seen[x], step)]
        return hazard


def _log_miss(hazard):
    return [[[math.log1p(-q) if q else 0.0 for q in row] for row in per_c] for per_c in hazard]


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
        if not is_int(self.tokens_ahead) or not 1 <= self.tokens_ahead <= 16:
            raise ServeError(f"tokens_ahead={self.tokens_ahead!r} must be an integer in [1, 16]")
        if not isinstance(self.online, bool):
            raise ServeError(f"online={self.online!r} must be a bool")
        if self.stats is None and not self.online:
            raise ServeError("fixed transition statistics (online=False) need stats: a file or a trace slice")

    def model(self, num_experts: int) -> "TransitionModel":
        """A fresh model for a workload of ``num_experts`` (a mismatch with ``stats`` raises ``ServeError``)."""
        return TransitionModel(num_experts, self.tokens_ahead, self.stats, self.online)


class TransitionModel:
    """The statistics a live server forecasts with, each live request's recent experts, and the mean number of
    items per batch.

    ``online``: learn from the tokens served so far (``observe`` each batch), starting from ``prior`` (or from
    nothing). A request's current token is pre-gated before it runs, so the transition into it is known when its
    batch runs; a finish is counted only once the request is seen FINISHED after its last batch. The forecast is
    rebuilt at most every ``refresh`` batches, and only once the counted tokens have doubled since the last
    build, which keeps the cost per iteration small. Not online: ``prior`` stays
    fixed (a file, or another slice of the trace). Either way ``observe`` keeps each running request's window
    of recent experts (its home), and the whole model is deterministic.
    """

    def __init__(self, num_experts: int, tokens_ahead: int = DEFAULT_TOKENS_AHEAD, prior: TransitionStats | None = None,
                 online: bool = True, refresh: int = 64):
        if not is_int(tokens_ahead) or tokens_ahead < 1:
            raise ServeError(f"tokens_ahead={tokens_ahead!r} must be a positive integer")
        if prior is not None:
            prior.check_experts(num_experts)
        elif not online:
            raise ServeError("fixed transition statistics need a prior (a statistics file or a trace slice)")
        else:
            prior = TransitionStats(num_experts, tuple((0,) * num_experts for _ in range(num_experts)))
        self._counts = [list(row) for row in prior.counts]
        if prior.home_counts is None:  # a version 1 file: homes are learned from nothing (P_h = P until then)
            self._home = [[[0] * num_experts for _ in range(num_experts)] for _ in range(num_experts)]
        else:
            self._home = [[list(row) for row in rows] for rows in prior.home_counts]
        self._tokens = prior.tokens
        self._finishes = prior.finishes
        self._last = {}  # request index -> expert of its latest served token
        self.recent = RecentExperts(num_experts)  # request index -> its last experts (online or not)
        self.contexts = {}  # request index -> {current expert: context}, dropped when its window moves (read-only
        # outside this class)
        self._running = ()
        self._online = online
        self._refresh = refresh
        self._age = 0
        self._built_at = prior.tokens  # generated tokens counted when the forecast was last built
        self.num_experts = num_experts
        self.tokens_ahead = tokens_ahead
        self.forecast = Forecast(prior, tokens_ahead)
        self.rollouts = {}  # serve.core.lookahead's memo of rollouts under this forecast
        self.items_per_batch = 1.0  # running mean of work items per batch (sets the forecast's time scale)
        self._batches = 0

    def stats(self) -> TransitionStats:
        home = tuple(tuple(map(tuple, rows)) for rows in self._home)
        return TransitionStats(self.num_experts, tuple(map(tuple, self._counts)), self._tokens, self._finishes, home)

    def context(self, request, current: int) -> int:
        """The forecast context (module step 2) of a live request whose current (or pending) token is on
        ``current``: its home from the tokens it has run, or from its prompt if it has run none. Kept per
        request until its window moves (the lookahead asks for the same requests every iteration)."""
        known = self.contexts.get(request.index)
        if known is None:
            known = self.contexts[request.index] = {}
        context = known.get(current)
        if context is None:
            num = self.num_experts
            if request.index in self.recent:
                home = self.recent.home(request.index, current)
            else:
                home = window_home(request.spec.prompt_experts, current, num)
            context = known[current] = num + home * num + current
        return context

    def observe(self, batch) -> None:
        """Called once per batch, before it runs: its size, each request's window of recent experts, and
        (online) the transitions into its tokens and the finishes of the previous batch."""
        self._batches += 1
        self.items_per_batch += (len(batch.requests) - self.items_per_batch) / min(self._batches, 256)
        recent = self.recent
        online = self._online
        last = self._last
        for request in self._running:
            if request.state is RequestState.FINISHED:
                if online:
                    self._finishes += 1
                last.pop(request.index, None)
                recent.drop(request.index)
                self.contexts.pop(request.index, None)
        counts, home = self._counts, self._home
        contexts, num = self.contexts, self.num_experts
        for request in batch.requests:
            if request.state is RequestState.PREFILL:
                prompt = request.spec.prompt_experts
                if online and request.chunk == 0:  # a prompt's transitions once, at its first chunk
                    count_transitions(prompt, counts, home)
                # The window: what the prefill has covered so far (the whole prompt after its last chunk).
                recent.reset(request.index, prompt[:request.chunks[request.chunk][1]])
                self.contexts.pop(request.index, None)
                last[request.index] = prompt[-1]
            else:
                expert = request.queue_expert
                index = request.index
                previous = last.get(index)
                if online and previous is not None:
                    counts[previous][expert] += 1
                    known = contexts.get(index)  # the previous token's context, if the lookahead asked for it
                    context = None if known is None else known.get(previous)
                    at = recent.home(index, previous) if context is None else (context - num) // num
                    home[at][previous][expert] += 1
                window = recent.push(index, expert)
                # The context the lookahead asks for next (this request's current token), computed here once.
                contexts[index] = {expert: num + home_of(window, expert) * num + expert}
                last[index] = expert
        self._running = batch.requests
        if not online:
            return
        self._tokens += len(batch.requests)  # each request of the batch emits one generated token
        self._age += 1
        # Rebuilt once the counts have doubled since the last build (and `refresh` batches have passed): a
        # rebuild also drops the lookahead's memo of rollouts, and once thousands of transitions are counted a
        # rebuild changes the forecast by little. A 10,000-request closed-loop simulation rebuilds 13 times
        # (106 when rebuilt at every sixteenth of growth, with 2.3x the rollouts; every 64 batches: 3,700).
        if self._age >= self._refresh and self._tokens >= 2 * self._built_at:
            self._age = 0
            self._built_at = self._tokens
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
