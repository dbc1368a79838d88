"""Fuzz: >= 1,000 malformed or hostile requests against a live server; every one a 4xx in the OpenAI envelope
naming the problem, none a 5xx, and the server still answers a good request afterwards."""

import collections

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serve.http.conftest import live_server

MAX_BODY = 4096
GOOD = {"model": "MODEL", "prompt": "hello", "max_tokens": 2, "temperature": 0}
GOOD_CHAT = {"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

# field -> strategy of values that must be refused (never a value the server accepts)
text = st.text(max_size=20)
not_int = st.one_of(text, st.booleans(), st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
                    st.lists(st.integers(), max_size=3), st.dictionaries(text, st.integers(), max_size=2))
not_bool = st.one_of(text, st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.lists(st.booleans(), max_size=2))
COMMON_BAD = {
    "max_tokens": st.one_of(st.integers(max_value=0), st.integers(min_value=10 ** 4), not_int),
    "temperature": st.one_of(st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False), st.floats(min_value=2.0001, allow_nan=False, allow_infinity=False),
                             text, st.booleans()),
    "top_p": st.one_of(st.floats(max_value=0.0, allow_nan=False, allow_infinity=False), st.floats(min_value=1.0001, allow_nan=False, allow_infinity=False), text),
    "top_k": st.one_of(st.integers(max_value=-2), text, st.booleans()),
    "n": st.one_of(st.integers(min_value=2), st.integers(max_value=0), text),
    "best_of": st.integers(min_value=2),
    "seed": st.one_of(text, st.integers(min_value=2 ** 64), st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer())),
    "stop": st.one_of(st.just(""), st.lists(st.just(""), min_size=1, max_size=2),
                      st.lists(st.text(min_size=1, max_size=3), min_size=5, max_size=8), st.integers(),
                      st.lists(st.integers(), min_size=1, max_size=3), st.text(min_size=257, max_size=300)),
    "stream": not_bool,
    "stream_options": st.dictionaries(text, st.integers(), max_size=2),  # without stream: refused
    "presence_penalty": st.floats(min_value=0.01, max_value=2),
    "frequency_penalty": st.floats(min_value=-2, max_value=-0.01),
    "repetition_penalty": st.floats(min_value=1.01, max_value=3),
    "logit_bias": st.dictionaries(st.integers(0, 99).map(str), st.integers(-100, 100), min_size=1, max_size=3),
    "ignore_eos": st.just(True),
    "model": st.one_of(text.filter(lambda s: s != "MODEL"), st.integers(), st.none(), st.lists(text, max_size=2)),
}
COMPLETION_BAD = {
    "prompt": st.one_of(st.just(""), st.just([]), st.lists(st.integers(min_value=10 ** 6), min_size=1, max_size=3),
                        st.lists(st.integers(max_value=-1), min_size=1, max_size=3),
                        st.lists(st.booleans(), min_size=1, max_size=3), st.integers(), st.none(),
                        st.dictionaries(text, text, max_size=2), st.lists(text, min_size=2, max_size=4),
                        st.text(alphabet="abcdef ", min_size=3000, max_size=3200)),
    "logprobs": st.one_of(st.integers(min_value=1, max_value=5), st.just(True)),
    "echo": st.just(True),
    "suffix": st.text(min_size=1, max_size=5),
}
bad_message = st.one_of(
    st.fixed_dictionaries({"role": text.filter(lambda r: r not in ("system", "user", "assistant")), "content": text}),
    st.fixed_dictionaries({"role": st.just("user"), "content": st.one_of(st.integers(), st.none(), st.booleans())}),
    st.fixed_dictionaries({"role": st.just("user"),
                           "content": st.just([{"type": "image_url", "image_url": {"url": "x"}}])}),
    st.fixed_dictionaries({"role": st.just("assistant"), "content": st.just(""),
                           "tool_calls": st.just([{"id": "1"}])}),
    st.integers(), text)
CHAT_BAD = {
    "messages": st.one_of(st.just([]), text, st.integers(), st.lists(bad_message, min_size=1, max_size=3),
                          st.just([{"role": "user", "content": "x" * 3000}])),
    "max_completion_tokens": st.one_of(st.integers(max_value=0), not_int),
    "logprobs": st.just(True),
    "tools": st.just([{"type": "function", "function": {"name": "f"}}]),
    "tool_choice": st.just("auto"),
    "response_format": st.just({"type": "json_object"}),
}


@st.composite
def field_case(draw):
    chat = draw(st.booleans())
    table = {**COMMON_BAD, **(CHAT_BAD if chat else COMPLETION_BAD)}
    key = draw(st.sampled_from(sorted(table)))
    body = dict(GOOD_CHAT if chat else GOOD)
    body[key] = draw(table[key])
    return ("/v1/chat/completions" if chat else "/v1/completions"), body, key


raw_case = st.one_of(
    st.binary(min_size=1, max_size=64).filter(lambda b: _not_json(b)),  # non-UTF-8 or not JSON at all
    st.sampled_from([b"NaN", b'{"model": NaN}', b"[" * 5000, b"{" * 100, b"", b"null", b"[]", b'"x"', b"1",
                     b'{"model": "MODEL", "prompt": "x", "max_tokens": Infinity}', b'{"prompt": "x"}']),
    st.text(max_size=30).map(lambda t: t.encode()).filter(lambda b: _not_json(b)))


def _not_json(raw: bytes) -> bool:
    import json

    try:
        return not isinstance(json.loads(raw), dict)
    except (ValueError, RecursionError):
        return True


def _check(response, seen, key=None):
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert "Traceback" not in response.text
    err = response.json()["error"]
    assert err["code"] == response.status_code and err["message"] and err["type"]
    if key is not None:  # the message or the param names the field at fault
        assert key in (err["param"] or "") or key in err["message"], (key, err)
    seen[response.status_code] += 1


def test_fuzz_1000_hostile_requests_all_4xx_then_a_good_one(real_engine):
    eng = real_engine
    with live_server(eng, max_body_bytes=MAX_BODY) as (url, state), httpx.Client(base_url=url, timeout=30) as client:
        model = state.model_name
        seen = collections.Counter()

        @settings(max_examples=700, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(field_case())
        def fields(case):
            path, body, key = case
            if body.get("model") == "MODEL":
                body["model"] = model
            _check(client.post(path, json=body), seen, key)

        @settings(max_examples=300, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(raw_case, st.sampled_from(["/v1/completions", "/v1/chat/completions"]))
        def raw(body, path):
            _check(client.post(path, content=body, headers={"content-type": "application/json"}), seen)

        fields()
        raw()
        fixed = [("POST", "/v1/completions", {"content": b"x" * (MAX_BODY + 1)}),  # huge body
                 ("POST", "/v1/completions", {"content": b"{}", "headers": {"content-length": str(10 ** 9)}}),
                 ("POST", "/v1/completions", {"content": b"a=b", "headers": {"content-type": "text/plain"}}),
                 ("GET", "/v1/completions", {}), ("POST", "/v1/models", {}), ("GET", "/v2/nothing", {}),
                 ("DELETE", "/health", {})]
        for method, path, kw in fixed:
            if "content-length" in kw.get("headers", {}):
                continue  # httpx refuses a lying content-length; covered by the huge body
            _check(client.request(method, path, **kw), seen)
        assert sum(seen.values()) >= 1000, seen
        good = client.post("/v1/completions", json={**GOOD, "model": model})
        assert good.status_code == 200 and good.json()["choices"][0]["finish_reason"] in ("length", "stop")
        assert state.loop.alive
