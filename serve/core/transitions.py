"""Expert-transition statistics behind ``belady-expected``'s forecast (step 1 of ``serve.core.next_use``).

``TransitionStats``: counts[a][b] = how often a token on expert b follows a token on expert a within a request,
the generated tokens and finished requests (the chance that a request stops after a token), and
home_counts[h][a][b], the same transitions split by the request's home h when a ran (``serve.core.home``).
Estimated from recorded requests (``estimate_transitions``), read from a statistics file (``stats_from_json``),
or learned online (``serve.core.next_use.TransitionModel``). Pure Python.
"""

import dataclasses
import math

from serve.core.home import HOME_WINDOW, count_transitions
from serve.core.types import ServeError

STATS_FORMAT = "readme-jax-transition-stats"
STATS_VERSION = 2  # 2 added home_counts; version 1 files (no home) still read
SMOOTHING = 0.5  # additive pseudo-count per transition: unseen transitions keep a small probability
HOME_PRIOR = 16.0  # pseudo-counts of P[c] in a home-conditioned row: rare (home, current) pairs fall back to P


@dataclasses.dataclass(frozen=True, slots=True)
class TransitionStats:
    """Counts behind a forecast (step 1 of ``serve.core.next_use``).

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
    home_counts: tuple | None = None  # E x E x E, [home][a][b]; None: not recorded (a version 1 file)

    def __post_init__(self):
        if not is_int(self.num_experts) or self.num_experts < 1:
            raise ServeError(f"transition statistics: num_experts={self.num_experts!r} must be a positive integer")
        if len(self.counts) != self.num_experts or any(len(row) != self.num_experts for row in self.counts):
            raise ServeError(
                f"transition statistics: counts must be {self.num_experts} x {self.num_experts} "
                f"(num_experts={self.num_experts})"
            )
        for a, row in enumerate(self.counts):
            for b, value in enumerate(row):
                if not is_int(value) or value < 0:
                    raise ServeError(f"transition statistics: counts[{a}][{b}]={value!r} is not an integer >= 0")
        if self.home_counts is not None:
            home = self.home_counts
            if len(home) != self.num_experts or any(
                len(rows) != self.num_experts or any(len(row) != self.num_experts for row in rows) for rows in home
            ):
                raise ServeError(
                    f"transition statistics: home_counts must be {self.num_experts} x {self.num_experts} x "
                    f"{self.num_experts} (num_experts={self.num_experts})"
                )
            for h, rows in enumerate(home):
                for a, row in enumerate(rows):
                    for b, value in enumerate(row):
                        if not is_int(value) or value < 0:
                            raise ServeError(
                                f"transition statistics: home_counts[{h}][{a}][{b}]={value!r} is not an integer >= 0"
                            )
        for name in ("tokens", "finishes"):
            value = getattr(self, name)
            if not is_int(value) or value < 0:
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

    def home_matrices(self) -> list[list[list[float]]]:
        """P_h for every home h: row c is home_counts[h][c] plus ``HOME_PRIOR`` pseudo-counts spread as P[c]
        (exactly P where nothing was recorded for that pair, and for every h without home_counts)."""
        p = self.matrix()
        if self.home_counts is None:
            return [p] * self.num_experts
        out = []
        for rows in self.home_counts:
            matrix = []
            for row, prior in zip(rows, p):
                total = sum(row) + HOME_PRIOR
                matrix.append([(value + HOME_PRIOR * chance) / total for value, chance in zip(row, prior)])
            out.append(matrix)
        return out

    def stop_probability(self) -> float:
        """Chance that a request stops after a generated token (smoothed: 1/2 with no data)."""
        return (self.finishes + 1) / (self.tokens + 2)

    def repeat_rate(self) -> float:
        """Share of counted transitions that stay on the same expert (nan without any)."""
        total = sum(map(sum, self.counts))
        return sum(self.counts[e][e] for e in range(self.num_experts)) / total if total else math.nan

    def home_rate(self) -> float:
        """Share of counted transitions whose next token is on the home of the token before (nan without
        home counts or transitions)."""
        if self.home_counts is None:
            return math.nan
        total = sum(map(sum, self.counts))
        home = sum(self.home_counts[h][a][h] for h in range(self.num_experts) for a in range(self.num_experts))
        return home / total if total else math.nan

    def check_experts(self, num_experts: int, where: str = "transition statistics") -> None:
        if self.num_experts != num_experts:
            raise ServeError(
                f"{where} are for {self.num_experts} experts, but the workload has {num_experts}"
            )

    def to_json(self, source: dict | None = None) -> dict:
        out = {
            "format": STATS_FORMAT,
            "version": STATS_VERSION if self.home_counts is not None else 1,
            "num_experts": self.num_experts,
            "counts": [list(row) for row in self.counts],
            "tokens": self.tokens,
            "finishes": self.finishes,
        }
        if self.home_counts is not None:
            out["home_window"] = HOME_WINDOW
            out["home_counts"] = [[list(row) for row in rows] for rows in self.home_counts]
        if source is not None:
            out["source"] = source
        return out


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def stats_from_json(obj, where: str) -> TransitionStats:
    """Parse ``TransitionStats.to_json`` output; anything malformed raises ``ServeError`` naming ``where``."""
    if not isinstance(obj, dict):
        raise ServeError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if obj.get("format") != STATS_FORMAT:
        raise ServeError(f"{where}: format={obj.get('format')!r}, expected {STATS_FORMAT!r}")
    version = obj.get("version")
    if version not in (1, STATS_VERSION) or isinstance(version, bool):
        raise ServeError(f"{where}: unsupported version {version!r} (this reader knows 1 and {STATS_VERSION})")
    required = ("num_experts", "counts", "tokens", "finishes") + (("home_window", "home_counts") if version == 2 else ())
    for key in required:
        if key not in obj:
            raise ServeError(f"{where}: missing field {key!r}")
    unknown = sorted(set(obj) - {"format", "version", "source", *required})
    if unknown:
        raise ServeError(f"{where}: unknown field {unknown[0]!r}")
    counts = obj["counts"]
    if not isinstance(counts, list) or not all(isinstance(row, list) for row in counts):
        raise ServeError(f"{where}: counts must be a list of lists of integers")
    home = None
    if version == 2:
        if obj["home_window"] != HOME_WINDOW:
            raise ServeError(f"{where}: home_window={obj['home_window']!r}, but this version uses {HOME_WINDOW}; "
                             "estimate the statistics again (readme-jax transition-stats)")
        home = obj["home_counts"]
        if not isinstance(home, list) or not all(
            isinstance(rows, list) and all(isinstance(row, list) for row in rows) for rows in home
        ):
            raise ServeError(f"{where}: home_counts must be a list of lists of lists of integers")
        home = tuple(tuple(tuple(row) for row in rows) for rows in home)
    try:
        return TransitionStats(obj["num_experts"], tuple(tuple(row) for row in counts), obj["tokens"], obj["finishes"],
                               home)
    except ServeError as exc:
        raise ServeError(f"{where}: {exc}") from None


def estimate_transitions(specs, num_experts: int) -> TransitionStats:
    """Counts over recorded requests: every consecutive pair of their prompt-then-output experts (overall and
    by the home at the first of the pair), every generated token, one finish per request."""
    counts = [[0] * num_experts for _ in range(num_experts)]
    home = [[[0] * num_experts for _ in range(num_experts)] for _ in range(num_experts)]
    tokens = 0
    for spec in specs:
        sequence = spec.prompt_experts + spec.output_experts
        if max(sequence) >= num_experts or min(sequence) < 0:
            raise ServeError(f"request {spec.request_id!r}: an expert id lies outside [0, {num_experts})")
        count_transitions(sequence, counts, home)
        tokens += len(spec.output_experts)
    frozen = tuple(tuple(map(tuple, rows)) for rows in home)
    return TransitionStats(num_experts, tuple(map(tuple, counts)), tokens, len(specs), frozen)
