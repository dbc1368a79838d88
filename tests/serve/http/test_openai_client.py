"""The official openai client against a live server on loopback: completions and chat, streamed and not; greedy
text equal to the engine's own generate for the same prompt."""

import pytest

openai = pytest.importorskip("openai")

from tests.serve.http.conftest import live_server  # noqa: E402

PROMPT, N = "The expert cache", 12


@pytest.fixture(scope="module")
def server(engine):
    eng = engine
    with live_server(eng) as (url, state):
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        yield eng, state, client


def test_models_lists_the_model_with_root(server):
    eng, state, client = server
    models = client.models.list().data
    assert [m.id for m in models] == [state.model_name]
    assert models[0].model_extra["root"]


def test_completion_greedy_equals_engine_generate_streamed_or_not(server):
    eng, state, client = server
    expected = eng.generate([PROMPT], max_new_tokens=N, temperature=0.0)[0]
    whole = client.completions.create(model=state.model_name, prompt=PROMPT, max_tokens=N, temperature=0)
    assert whole.choices[0].text == expected
    assert whole.usage.prompt_tokens == len(eng.tokenizer.encode(PROMPT, add_special_tokens=True))
    chunks = list(client.completions.create(model=state.model_name, prompt=PROMPT, max_tokens=N, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert sum(1 for c in chunks if c.choices) == whole.usage.completion_tokens  # one chunk per token
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_chat_streamed_equals_whole(server):
    eng, state, client = server
    messages = [{"role": "user", "content": "Say something."}]
    whole = client.chat.completions.create(model=state.model_name, messages=messages, max_tokens=N, temperature=0)
    text = whole.choices[0].message.content
    assert whole.choices[0].message.role == "assistant" and whole.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(model=state.model_name, messages=messages, max_tokens=N, temperature=0,
                                            stream=True)
    chunks = [c for c in stream if c.choices]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_client_errors_are_typed(server):
    eng, state, client = server
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=state.model_name, prompt="x", max_tokens=10 ** 6)
    with pytest.raises(openai.BadRequestError, match="'n'"):
        client.completions.create(model=state.model_name, prompt="x", max_tokens=2, n=2)
