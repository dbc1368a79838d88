"""The embedded default model behind the server: the openai client's greedy text equals lm.generate's."""

import pytest

pytestmark = [pytest.mark.realmodel, pytest.mark.slow]


def test_openai_client_greedy_equals_lm_generate_on_the_default_model():
    openai = pytest.importorskip("openai")
    from readme_jax.assets import default_gguf_path

    if not default_gguf_path().is_file():
        pytest.skip("the default model is not in the cache (make setup)")
    import readme_jax
    Engine = pytest.importorskip("serve.engine").Engine
    from tests.serve.http.conftest import live_server

    lm = readme_jax.load("default")
    prompt, n = "In one sentence, what is a mixture of experts?", 24
    expected_plain = lm.generate(prompt, max_new_tokens=n)
    expected_chat = lm.generate(prompt, max_new_tokens=n, chat=True)
    with live_server(Engine.load("default")) as (url, state):
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
        out = client.completions.create(model=state.model_name, prompt=prompt, max_tokens=n, temperature=0)
        assert out.choices[0].text == expected_plain
        stream = client.chat.completions.create(model=state.model_name, max_tokens=n, temperature=0, stream=True,
                                                messages=[{"role": "user", "content": prompt}])
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected_chat
