"""JSONL trace format: round trip, and every kind of bad line is rejected with its line and value named."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve.sim.trace import Trace, TraceHeader, parse_trace, read_trace, write_trace
from serve.core.types import RequestSpec, ServeError

HEADER = json.dumps({"format": "readme-jax-trace", "version": 1, "num_experts": 4, "num_layers": 2})


def _line(**overrides):
    obj = {"id": "a", "arrival_s": 0.5, "max_new_tokens": 8, "prompt_experts": [0, 1], "output_experts": [3]}
    obj.update(overrides)
    return json.dumps({k: v for k, v in obj.items() if v is not ...})


@st.composite
def traces(draw):
    num_experts = draw(st.integers(1, 6))
    n = draw(st.integers(1, 5))
    arrivals = sorted(draw(st.lists(st.floats(0, 100, allow_nan=False), min_size=n, max_size=n)))
    specs = []
    for i, arrival in enumerate(arrivals):
        prompt = draw(st.lists(st.integers(0, num_experts - 1), min_size=1, max_size=6))
        output = draw(st.lists(st.integers(0, num_experts - 1), min_size=1, max_size=6))
        with_ids = draw(st.booleans())
        specs.append(
            RequestSpec(
                f"r{i}",
                arrival,
                tuple(prompt),
                tuple(output),
                len(output) + draw(st.integers(0, 3)),
                tuple(range(len(prompt))) if with_ids else None,
                tuple(range(7, 7 + len(output))) if with_ids else None,
                {"domain": "code"} if with_ids else None,
            )
        )
    layers = draw(st.none() | st.integers(1, 4))
    return Trace(TraceHeader(num_experts, layers, "test", {"seed": 1}), tuple(specs))


@settings(max_examples=30, deadline=None)
@given(traces())
def test_write_then_read_is_identity(tmp_path_factory, trace):
    path = tmp_path_factory.mktemp("trace") / "t.jsonl"
    write_trace(path, trace)
    assert read_trace(path) == trace


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "line 2: not valid JSON"),
        ("[1, 2]", "line 2: a request must be a JSON object"),
        (_line(id=...), "line 2: missing field 'id'"),
        (_line(extra=1), "line 2: unknown field 'extra'"),
        (_line(prompt_experts=[0, 4]), "line 2: expert id 4 in prompt_experts[1] out of range [0, 4)"),
        (_line(output_experts=[-1]), "line 2: expert id -1 in output_experts[0] out of range [0, 4)"),
        (_line(output_experts=[True]), "line 2: output_experts[0]=True is not an integer"),
        (_line(prompt_experts=[]), "line 2: prompt_experts must be a non-empty list"),
        (_line(arrival_s=-1), "line 2: arrival_s=-1 must be a finite number >= 0"),
        (_line(arrival_s=float("nan")), "line 2: arrival_s=nan"),
        (_line(max_new_tokens=0), "line 2: max_new_tokens=0"),
        (_line(output_experts=[0, 1, 2], max_new_tokens=2), "line 2: request 'a': 3 generated tokens exceed"),
        (_line(prompt_ids=[5]), "line 2: request 'a': len(prompt_ids)=1 != len(prompt_experts)=2"),
        (_line(id=7), "line 2: id=7 must be a non-empty string"),
        ("", "line 2: empty line"),
    ],
)
def test_bad_request_line_names_line_and_value(line, message):
    with pytest.raises(ServeError) as info:
        parse_trace([HEADER, line], "t.jsonl")
    # The error starts with the file and line, then says what is wrong with which value.
    assert str(info.value).startswith(f"t.jsonl {message}"), str(info.value)


def test_order_and_uniqueness_are_enforced():
    with pytest.raises(ServeError, match="line 3: arrival_s=0.1 is earlier"):
        parse_trace([HEADER, _line(), _line(id="b", arrival_s=0.1)], "t")
    with pytest.raises(ServeError, match="line 3: duplicate id 'a'"):
        parse_trace([HEADER, _line(), _line()], "t")


@pytest.mark.parametrize(
    "lines, message",
    [
        ([], "empty trace"),
        ([HEADER], "no requests"),
        (['{"format": "other", "version": 1, "num_experts": 2}', _line()], "format='other'"),
        (['{"format": "readme-jax-trace", "version": 2, "num_experts": 2}', _line()], "unsupported version 2"),
        (['{"format": "readme-jax-trace", "version": 1, "num_experts": 0}', _line()], "num_experts=0"),
        (['{"format": "readme-jax-trace", "version": 1}', _line()], "missing field 'num_experts'"),
    ],
)
def test_bad_header_or_empty_trace(lines, message):
    with pytest.raises(ServeError, match=message):
        parse_trace(lines, "t")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ServeError, match="cannot read trace"):
        read_trace(tmp_path / "absent.jsonl")


def test_writer_refuses_what_the_reader_would_reject(tmp_path):
    spec = RequestSpec("a", 0.0, (0,), (5,), 4)
    with pytest.raises(ServeError, match="expert id 5"):
        write_trace(tmp_path / "t.jsonl", Trace(TraceHeader(3), (spec,)))
    assert not (tmp_path / "t.jsonl").exists()
