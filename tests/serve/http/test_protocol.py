"""Request validation: what is accepted, ignored or refused, and that refusals name the field."""

import pytest

from serve.http.protocol import APIError, parse_job, parse_json


def job(chat=False, **fields):
    body = {"model": "m", **({"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "hi"})}
    body.update(fields)
    return parse_job(body, chat, "m")


def test_defaults_and_harmless_fields():
    j = job(logprobs=None, repetition_penalty=1.0, user="u", n=1, extra_field=3)
    assert (j.max_tokens, j.temperature, j.stream, j.stop) == (16, 1.0, False, ())
    assert j.ignored == ("extra_field",)
    c = job(chat=True, max_completion_tokens=5, response_format={"type": "text"})
    assert c.max_tokens == 5 and c.max_tokens_key == "max_completion_tokens"
    assert job(chat=True).max_tokens is None  # the context decides
    assert job(prompt=[[1, 2, 3]]).prompt == [1, 2, 3] and job(prompt=["x"]).prompt == "x"
    assert job(stream=True, stream_options={"include_usage": True}).include_usage
    assert job(stop="x").stop == ("x",) and job(top_k=-1).top_k is None


@pytest.mark.parametrize("fields, status, named", [
    ({"max_tokens": True}, 400, "max_tokens"), ({"max_tokens": 0}, 400, "max_tokens"),
    ({"temperature": 3}, 400, "temperature"), ({"top_p": 0}, 400, "top_p"), ({"n": 2}, 400, "'n'"),
    ({"logprobs": 2}, 400, "logprobs"), ({"echo": True}, 400, "echo"), ({"stop": [""]}, 400, "stop"),
    ({"stop": ["a"] * 5}, 400, "stop"), ({"stream_options": {}}, 400, "stream_options"),
    ({"model": "other"}, 404, "other"), ({"prompt": ["a", "b"]}, 400, "prompt"), ({"prompt": ""}, 400, "prompt"),
    ({"ignore_eos": True}, 400, "ignore_eos"), ({"presence_penalty": 0.5}, 400, "presence_penalty"),
])
def test_refusals_name_the_field(fields, status, named):
    with pytest.raises(APIError) as info:
        job(**fields)
    assert info.value.status == status and named in info.value.message


def test_chat_refusals():
    for messages in ([], [{"role": "tool", "content": "x"}], [{"role": "user", "content": 3}],
                     [{"role": "user", "content": [{"type": "image_url"}]}]):
        with pytest.raises(APIError, match="messages"):
            job(chat=True, messages=messages)
    with pytest.raises(APIError, match="tools"):
        job(chat=True, tools=[{"type": "function"}])


@pytest.mark.parametrize("raw, fragment", [(b"\xff", "UTF-8"), (b"{", "not valid JSON"), (b"[]", "an array"),
                                           (b'{"a": NaN}', "NaN"), (b"[" * 100000, "JSON")])
def test_bad_bodies(raw, fragment):
    with pytest.raises(APIError, match=fragment):
        parse_json(raw)
