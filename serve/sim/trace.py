"""JSONL routing traces: the replayable record of a workload and its pre-gated experts.

Format (UTF-8, one JSON object per line, no blank lines):

Line 1, the header::

    {"format": "readme-jax-trace", "version": 1, "num_experts": 6, "num_layers": 30,
     "source": "router", "meta": {...}}

``format``, ``version`` and ``num_experts`` are required; ``num_layers`` (int or null), ``source`` (string: e.g.
``synthetic-markov`` or ``router``) and ``meta`` (object) are optional.

Every further line is one request, in non-decreasing ``arrival_s``::

    {"id": "r0", "arrival_s": 0.0312, "max_new_tokens": 512,
     "prompt_experts": [2, 2, 0, 2], "output_experts": [2, 2, 5],
     "prompt_ids": [1, 415, 2936, 9060], "output_ids": [28705, 13, 13], "meta": {"domain": "code"}}

- ``id`` (string, unique), ``arrival_s`` (seconds, finite, >= 0), ``max_new_tokens`` (int >= 1),
  ``prompt_experts`` and ``output_experts`` (non-empty lists of ints in [0, num_experts)) are required.
- ``output_experts[j]`` is the router's expert for generated token j; its length is the number of generated
  tokens and may not exceed ``max_new_tokens`` (see ``serve.core.types`` for how a replay uses it).
- ``prompt_ids`` / ``output_ids`` (token ids, same lengths as the expert lists) and ``meta`` are optional.

Reading is strict: a malformed line, a missing or unknown field, a wrong type, an expert id out of range, an
out-of-order arrival or a duplicate id raises ``ServeError`` naming the file, the line and the value. Nothing is
skipped or repaired.
"""

import dataclasses
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

from readme_jax import atomic
from serve.core.types import RequestSpec, ServeError

FORMAT = "readme-jax-trace"
VERSION = 1
_HEADER_REQUIRED = ("format", "version", "num_experts")
_HEADER_OPTIONAL = ("num_layers", "source", "meta")
_REQUEST_REQUIRED = ("id", "arrival_s", "max_new_tokens", "prompt_experts", "output_experts")
_REQUEST_OPTIONAL = ("prompt_ids", "output_ids", "meta")


@dataclasses.dataclass(frozen=True, slots=True)
class TraceHeader:
    num_experts: int
    num_layers: int | None = None
    source: str = ""
    meta: dict | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Trace:
    header: TraceHeader
    requests: tuple[RequestSpec, ...]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_fields(obj: dict, required, optional, where: str) -> None:
    missing = [k for k in required if k not in obj]
    if missing:
        raise ServeError(f"{where}: missing field {missing[0]!r}")
    unknown = sorted(set(obj) - set(required) - set(optional))
    if unknown:
        raise ServeError(f"{where}: unknown field {unknown[0]!r} (allowed: {', '.join(required + optional)})")


def _int_list(obj: dict, key: str, where: str, low: int, high: int | None) -> tuple[int, ...]:
    values = obj[key]
    if not isinstance(values, list) or not values:
        raise ServeError(f"{where}: {key} must be a non-empty list of integers")
    # Fast path for the common case (a trace holds millions of ids): plain ints, all in range. type() is
    # exact, so bools (an int subclass) fall through to the loop below, which names the first bad entry.
    if set(map(type, values)) == {int} and min(values) >= low and (high is None or max(values) < high):
        return tuple(values)
    for position, value in enumerate(values):
        if not _is_int(value):
            raise ServeError(f"{where}: {key}[{position}]={value!r} is not an integer")
        if value < low or (high is not None and value >= high):
            bound = f"[{low}, {high})" if high is not None else f">= {low}"
            what = "expert id" if high is not None else "token id"
            raise ServeError(f"{where}: {what} {value} in {key}[{position}] out of range {bound}")
    return tuple(values)


def parse_header(obj, where: str) -> TraceHeader:
    if not isinstance(obj, dict):
        raise ServeError(f"{where}: the header must be a JSON object")
    _check_fields(obj, _HEADER_REQUIRED, _HEADER_OPTIONAL, where)
    if obj["format"] != FORMAT:
        raise ServeError(f"{where}: format={obj['format']!r}, expected {FORMAT!r}")
    if obj["version"] != VERSION:
        raise ServeError(f"{where}: unsupported version {obj['version']!r} (this reader knows {VERSION})")
    num_experts = obj["num_experts"]
    if not _is_int(num_experts) or num_experts < 1:
        raise ServeError(f"{where}: num_experts={num_experts!r} must be a positive integer")
    num_layers = obj.get("num_layers")
    if num_layers is not None and (not _is_int(num_layers) or num_layers < 1):
        raise ServeError(f"{where}: num_layers={num_layers!r} must be a positive integer or null")
    source = obj.get("source", "")
    if not isinstance(source, str):
        raise ServeError(f"{where}: source={source!r} must be a string")
    meta = obj.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise ServeError(f"{where}: meta must be a JSON object")
    return TraceHeader(num_experts, num_layers, source, meta)


def parse_request(obj, num_experts: int, where: str) -> RequestSpec:
    """Validate one request object (already decoded from JSON)."""
    if not isinstance(obj, dict):
        raise ServeError(f"{where}: a request must be a JSON object")
    _check_fields(obj, _REQUEST_REQUIRED, _REQUEST_OPTIONAL, where)
    request_id = obj["id"]
    if not isinstance(request_id, str) or not request_id:
        raise ServeError(f"{where}: id={request_id!r} must be a non-empty string")
    arrival = obj["arrival_s"]
    if isinstance(arrival, bool) or not isinstance(arrival, (int, float)) or not math.isfinite(arrival) or arrival < 0:
        raise ServeError(f"{where}: arrival_s={arrival!r} must be a finite number >= 0")
    max_new = obj["max_new_tokens"]
    if not _is_int(max_new) or max_new < 1:
        raise ServeError(f"{where}: max_new_tokens={max_new!r} must be a positive integer")
    prompt_experts = _int_list(obj, "prompt_experts", where, 0, num_experts)
    output_experts = _int_list(obj, "output_experts", where, 0, num_experts)
    ids = {}
    for key in ("prompt_ids", "output_ids"):
        if obj.get(key) is not None:
            ids[key] = _int_list(obj, key, where, 0, None)
    meta = obj.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise ServeError(f"{where}: meta must be a JSON object")
    try:
        return RequestSpec(
            request_id, float(arrival), prompt_experts, output_experts, max_new,
            ids.get("prompt_ids"), ids.get("output_ids"), meta,
        )  # fmt: skip
    except ServeError as exc:
        raise ServeError(f"{where}: {exc}") from None


def parse_trace(lines: Iterable[str], name: str = "<trace>") -> Trace:
    """Parse and validate trace lines (module docstring); ``name`` prefixes every error."""
    header = None
    requests = []
    seen = set()
    previous = 0.0
    for number, line in enumerate(lines, start=1):
        where = f"{name} line {number}"
        if not line.strip():
            raise ServeError(f"{where}: empty line")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ServeError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if header is None:
            header = parse_header(obj, where)
            continue
        spec = parse_request(obj, header.num_experts, where)
        if spec.request_id in seen:
            raise ServeError(f"{where}: duplicate id {spec.request_id!r}")
        if spec.arrival_s < previous:
            raise ServeError(f"{where}: arrival_s={spec.arrival_s} is earlier than the previous line's {previous}")
        seen.add(spec.request_id)
        previous = spec.arrival_s
        requests.append(spec)
    if header is None:
        raise ServeError(f"{name}: empty trace (no header line)")
    if not requests:
        raise ServeError(f"{name}: the trace has a header but no requests")
    return Trace(header, tuple(requests))


def read_trace(path) -> Trace:
    """Read a trace file (module docstring)."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as handle:
            return parse_trace((line.rstrip("\n") for line in handle), str(path))
    except OSError as exc:
        raise ServeError(f"cannot read trace {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ServeError(f"{path}: not UTF-8 text ({exc.reason})") from None


def header_to_json(header: TraceHeader) -> dict:
    obj = {"format": FORMAT, "version": VERSION, "num_experts": header.num_experts}
    if header.num_layers is not None:
        obj["num_layers"] = header.num_layers
    if header.source:
        obj["source"] = header.source
    if header.meta is not None:
        obj["meta"] = header.meta
    return obj


def request_to_json(spec: RequestSpec) -> dict:
    obj = {
        "id": spec.request_id,
        "arrival_s": spec.arrival_s,
        "max_new_tokens": spec.max_new_tokens,
        "prompt_experts": list(spec.prompt_experts),
        "output_experts": list(spec.output_experts),
    }
    if spec.prompt_ids is not None:
        obj["prompt_ids"] = list(spec.prompt_ids)
    if spec.output_ids is not None:
        obj["output_ids"] = list(spec.output_ids)
    if spec.meta is not None:
        obj["meta"] = spec.meta
    return obj


def trace_lines(trace: Trace) -> Iterator[str]:
    """The trace as JSONL lines (no newlines), validated exactly as a reader would validate them."""
    header_line = json.dumps(header_to_json(trace.header), separators=(",", ":"))
    request_lines = [json.dumps(request_to_json(s), separators=(",", ":")) for s in trace.requests]
    parse_trace([header_line, *request_lines], "<trace being written>")  # never write what cannot be read
    yield header_line
    yield from request_lines


def write_trace(path, trace: Trace) -> Path:
    """Validate ``trace``, then write it to ``path`` atomically (parent folders are created); returns the path."""
    path = Path(path)
    text = "".join(line + "\n" for line in trace_lines(trace))  # raises before anything is written
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic.write_text(path, text)
