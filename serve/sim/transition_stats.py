"""Expert-transition statistics files for ``belady-expected``: write from a trace slice, read back strictly.

A statistics file is one JSON object (``serve.core.transitions.TransitionStats.to_json``)::

    {"format": "readme-jax-transition-stats", "version": 2, "num_experts": 6,
     "counts": [[...], ...], "tokens": 1888512, "finishes": 10000,
     "home_window": 32, "home_counts": [[[...], ...], ...],
     "source": {"trace": "...", "first_request": 2000, "requests": 8000}}

``home_counts[h][a][b]`` splits ``counts[a][b]`` by the request's home when a ran (``serve.core.home``).
Version 1 files (no home fields) still read.

``readme-jax transition-stats`` estimates one from requests [skip, skip + requests) of a trace, so that a replay
of the trace's first ``skip`` requests (``bench-cache --requests skip``) never sees the requests its forecast
was estimated on. Reading raises ``ServeError`` naming the file for anything malformed; a count matrix for
another number of experts is refused where the workload is known (``TransitionStats.check_experts``).
"""

import json
from pathlib import Path

from readme_jax import atomic
from serve.core.transitions import TransitionStats, estimate_transitions, stats_from_json
from serve.core.types import ServeError
from serve.sim.trace import read_trace


def read_stats(path) -> TransitionStats:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ServeError(f"transition statistics {path}: cannot read ({exc.strerror or exc})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ServeError(f"transition statistics {path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    return stats_from_json(obj, f"transition statistics {path}")


def write_stats(path, stats: TransitionStats, source: dict | None = None) -> Path:
    return atomic.write_text(path, json.dumps(stats.to_json(source), sort_keys=True) + "\n")


def stats_from_trace(trace_path, skip: int = 0, requests: int | None = None) -> tuple[TransitionStats, dict]:
    """Statistics of requests [skip, skip + requests) of a trace (all after ``skip`` when None), and where
    they came from."""
    if skip < 0:
        raise ServeError(f"--skip {skip} must be >= 0")
    if requests is not None and requests < 1:
        raise ServeError(f"--requests {requests} must be >= 1")
    trace = read_trace(trace_path)
    chosen = trace.requests[skip:] if requests is None else trace.requests[skip : skip + requests]
    if not chosen:
        raise ServeError(f"trace {trace_path}: no requests after the first {skip} ({len(trace.requests)} in all)")
    source = {"trace": str(trace_path), "first_request": skip, "requests": len(chosen)}
    return estimate_transitions(chosen, trace.header.num_experts), source
