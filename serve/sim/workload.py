"""Synthetic workloads: Poisson or bursty arrivals, chat-like lengths, expert sequences from a Markov model.

Used until routing traces from the real router exist (then ``serve.sim.trace`` files are replayed instead). One
request is drawn as follows, from a single seeded generator, so a seed fixes the whole workload:

1. Arrival: inter-arrival gaps are independent Gamma variables with mean 1 / ``rate_per_s`` and coefficient of
   variation (std / mean) ``arrival_cv``: shape 1 / cv**2, scale cv**2 / rate (a Gamma renewal process that
   starts at t = 0). ``arrival_cv`` = 1 (the default) is the exponential gap of a Poisson process, drawn with
   ``random.expovariate`` exactly as before the parameter existed, so default workloads are unchanged bit for
   bit. cv > 1 is bursty: most gaps are short and a few are long, so requests arrive in clumps separated by
   quiet spells at the same mean rate. Why: real LLM serving arrivals are bursty. BurstGPT (Wang et al., 2024)
   fits the inter-arrival gaps of its ChatGPT/GPT-4 service traces with Gamma distributions of shape below 1,
   i.e. cv > 1 (quoted, not re-checked here). Bursts make work wait at lower mean loads than Poisson arrivals
   do, and waiting pre-gated work is what expert-aware batching and Belady's cache use; docs/serving.md
   ("Bursty arrivals") measures how much that changes. ``retime_arrivals`` draws the same process for the
   requests of a recorded trace.
2. Lengths: prompt and output lengths are log-normal with the given mean and shape ``sigma``, rounded, and
   clipped to [1, max]. The default means are those LMSYS-Chat-1M reports for Chatbot Arena conversations
   (69.5 prompt and 214.5 response tokens on average; docs/serving.md discusses them).
3. Home expert: the request's domain, h, drawn from the popularity distribution
   p(e) proportional to (e + 1) ** -popularity_skew (Zipf-like: expert 0 is the most popular).
4. Expert sequence over prompt then output tokens, a Markov chain with tunable locality:
   each run of tokens has one expert drawn from q_h = (1 - home_weight) * p + home_weight * onehot(h), and a run
   continues to the next token with probability ``stay`` (so run lengths are geometric). The fraction of
   tokens that repeat the previous token's expert is about stay + (1 - stay) * q_h(previous); the paper measured
   2921 / 4096 = 0.71 for its router (section 6.7 d).
"""

import bisect
import dataclasses
import itertools
import math
import random

from serve.core.types import RequestSpec, ServeError


@dataclasses.dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """Parameters of the synthetic workload (module docstring, steps 1-4)."""

    num_requests: int = 1000
    rate_per_s: float = 4.0
    arrival_cv: float = 1.0  # coefficient of variation of the inter-arrival gaps; 1 = Poisson
    num_experts: int = 7
    prompt_mean: float = 69.5
    prompt_sigma: float = 1.0
    prompt_max: int = 256
    output_mean: float = 214.5
    output_sigma: float = 0.8
    output_max: int = 512
    popularity_skew: float = 1.0
    stay: float = 0.3
    home_weight: float = 0.7
    seed: int = 0

    def __post_init__(self):
        positive_ints = ("num_requests", "num_experts", "prompt_max", "output_max")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ServeError(f"{name}={value!r} must be a positive integer")
        for name in ("rate_per_s", "arrival_cv", "prompt_mean", "output_mean"):
            check_positive(name, getattr(self, name))
        for name in ("prompt_sigma", "output_sigma", "popularity_skew"):
            value = getattr(self, name)
            if not value >= 0.0 or math.isinf(value):
                raise ServeError(f"{name}={value!r} must be finite and >= 0")
        if not 0.0 <= self.stay < 1.0:  # stay = 1 would never end a run
            raise ServeError(f"stay={self.stay!r} must lie in [0, 1)")
        if not 0.0 <= self.home_weight <= 1.0:
            raise ServeError(f"home_weight={self.home_weight!r} must lie in [0, 1]")

    def popularity(self) -> list[float]:
        """p(e) of step 3."""
        weights = [(e + 1) ** -self.popularity_skew for e in range(self.num_experts)]
        total = math.fsum(weights)
        return [w / total for w in weights]


def check_positive(name: str, value) -> None:
    """Raise ``ServeError`` naming ``name`` unless ``value`` is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0.0 or math.isinf(value):
        raise ServeError(f"{name}={value!r} must be finite and > 0")


def arrival_gap(rng: random.Random, rate_per_s: float, cv: float) -> float:
    """One inter-arrival gap of step 1: Gamma with mean 1 / rate and coefficient of variation ``cv``.

    cv == 1 draws ``rng.expovariate(rate)``, the Poisson gap (the same numbers as before ``arrival_cv`` existed).
    Otherwise ``rng.gammavariate(1 / cv**2, cv**2 / rate)``. A very bursty process can draw gaps of 0.0
    (simultaneous arrivals), which traces allow.
    """
    if cv == 1.0:
        return rng.expovariate(rate_per_s)
    shape = 1.0 / (cv * cv)
    return rng.gammavariate(shape, 1.0 / (shape * rate_per_s))


def lognormal_length(rng: random.Random, mean: float, sigma: float, maximum: int) -> int:
    mu = math.log(mean) - sigma * sigma / 2.0  # so that the unclipped mean is `mean`
    return min(maximum, max(1, round(rng.lognormvariate(mu, sigma))))


class MarkovExperts:
    """Step 4: expert sequences with geometric runs around a home expert."""

    def __init__(self, popularity: list[float], stay: float, home_weight: float):
        self.num_experts = len(popularity)
        self.stay = stay
        self._popularity_cdf = list(itertools.accumulate(popularity))
        self._home_cdf = []
        for home in range(self.num_experts):
            mix = [(1.0 - home_weight) * p + (home_weight if e == home else 0.0) for e, p in enumerate(popularity)]
            self._home_cdf.append(list(itertools.accumulate(mix)))
        self._log_stay = math.log(stay) if stay > 0.0 else None

    def draw_home(self, rng: random.Random) -> int:
        return self._draw(rng, self._popularity_cdf)

    def sequence(self, rng: random.Random, home: int, length: int) -> list[int]:
        cdf = self._home_cdf[home]
        out = []
        while len(out) < length:
            expert = self._draw(rng, cdf)
            run = 1
            if self._log_stay is not None:
                # Geometric run length: P(run = k) = stay ** (k - 1) * (1 - stay).
                run += int(math.log(1.0 - rng.random()) / self._log_stay)
            out.extend([expert] * run)
        del out[length:]
        return out

    def _draw(self, rng: random.Random, cdf: list[float]) -> int:
        # min(): guards the last bucket against a cdf that sums to 1 - epsilon.
        return min(bisect.bisect_right(cdf, rng.random() * cdf[-1]), self.num_experts - 1)


def synthetic_workload(config: WorkloadConfig) -> list[RequestSpec]:
    """Draw ``config.num_requests`` requests in arrival order (module docstring)."""
    rng = random.Random(config.seed)
    markov = MarkovExperts(config.popularity(), config.stay, config.home_weight)
    max_new_tokens = config.output_max
    specs = []
    now = 0.0
    for index in range(config.num_requests):
        now += arrival_gap(rng, config.rate_per_s, config.arrival_cv)
        prompt_len = lognormal_length(rng, config.prompt_mean, config.prompt_sigma, config.prompt_max)
        output_len = lognormal_length(rng, config.output_mean, config.output_sigma, config.output_max)
        home = markov.draw_home(rng)
        experts = markov.sequence(rng, home, prompt_len + output_len)
        specs.append(
            RequestSpec(
                request_id=f"r{index}",
                arrival_s=now,
                prompt_experts=tuple(experts[:prompt_len]),
                output_experts=tuple(experts[prompt_len:]),
                max_new_tokens=max_new_tokens,
            )
        )
    return specs


def repeat_rate(specs: list[RequestSpec]) -> float:
    """Fraction of tokens (after the first of each request) whose expert repeats the previous token's."""
    same = total = 0
    for spec in specs:
        sequence = spec.prompt_experts + spec.output_experts
        total += len(sequence) - 1
        same += sum(1 for a, b in itertools.pairwise(sequence) if a == b)
    return same / total if total else math.nan


def mean_rate(specs: list[RequestSpec]) -> float:
    """Arrivals per second of a workload that starts at t = 0: n / (last arrival).

    For a Poisson process started at 0, the n-th arrival is expected at n / rate, so this estimates the rate.
    """
    if not specs:
        raise ServeError("an empty workload has no arrival rate")
    last = specs[-1].arrival_s
    if not last > 0.0:
        raise ServeError(f"every arrival_s is {last}: the workload has no time span, so it has no arrival rate")
    return len(specs) / last


def rescale_rate(specs: list[RequestSpec], rate_per_s: float) -> list[RequestSpec]:
    """The same requests with arrival times stretched or compressed so that ``mean_rate`` becomes ``rate_per_s``.

    Scaling time keeps the order of arrivals and the shape of the arrival process (a Poisson process stays a
    Poisson process), so one recorded trace can be replayed at several loads.
    """
    check_positive("rate_per_s", rate_per_s)
    scale = mean_rate(specs) / rate_per_s
    return [dataclasses.replace(spec, arrival_s=spec.arrival_s * scale) for spec in specs]


def retime_arrivals(specs: list[RequestSpec], rate_per_s: float, cv: float, seed: int = 0) -> list[RequestSpec]:
    """The same requests, in the same order, with arrival times redrawn from the process of step 1.

    Gaps are drawn from ``random.Random(seed)`` with ``arrival_gap(rate_per_s, cv)`` and summed from t = 0; then
    ``rescale_rate`` makes ``mean_rate`` of the result exactly ``rate_per_s`` (at cv = 4 and 10,000 requests the
    drawn span alone would be off by about 4%, one standard deviation). Only ``arrival_s`` changes. With one
    seed, the gaps drawn at two rates differ by a time scale only (up to rounding; the Gamma scale multiplies a
    draw that does not depend on the rate), so one seed gives the same burst pattern at every load, like
    ``rescale_rate`` on a recorded trace.
    """
    check_positive("rate_per_s", rate_per_s)
    check_positive("arrival_cv", cv)
    if not specs:
        return []
    rng = random.Random(seed)
    arrivals = itertools.accumulate(arrival_gap(rng, rate_per_s, cv) for _ in specs)
    return rescale_rate([dataclasses.replace(spec, arrival_s=t) for spec, t in zip(specs, arrivals)], rate_per_s)
