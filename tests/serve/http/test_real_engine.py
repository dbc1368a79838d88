"""The server over the real engine (a tiny random Read-ME MoE with 2 of its 4 experts on the device): the openai
client's greedy text equals lm.generate's, streamed or not, and /metrics carries the engine's cache counters."""

import pytest

openai = pytest.importorskip("openai")

from tests.serve.http.conftest import live_server, metric_value, tiny_moe_folder  # noqa: E402

PROMPT, N = "The expert cache", 10


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import readme_jax
    from serve.engine import Engine

    folder = str(tiny_moe_folder(tmp_path_factory.mktemp("real-engine") / "moe"))
    lm = readme_jax.load(folder)
    engine = Engine.load(folder, slots=2, max_seqs=4)
    with live_server(engine) as (url, state):
        yield lm, engine, url, state


def test_openai_client_greedy_text_equals_lm_generate(served):
    lm, engine, url, state = served
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
    expected = lm.generate(PROMPT, max_new_tokens=N)
    whole = client.completions.create(model=state.model_name, prompt=PROMPT, max_tokens=N, temperature=0)
    assert whole.choices[0].text == expected
    stream = client.completions.create(model=state.model_name, prompt=PROMPT, max_tokens=N, temperature=0,
                                       stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == expected
    chat = client.chat.completions.create(model=state.model_name, max_tokens=N, temperature=0,
                                          messages=[{"role": "user", "content": PROMPT}])
    assert chat.choices[0].message.content == lm.generate(PROMPT, max_new_tokens=N, chat=True)


def test_metrics_report_the_engines_cache_counters(served):
    import httpx

    lm, engine, url, state = served
    httpx.post(url + "/v1/completions", json={"model": state.model_name, "prompt": "abc", "max_tokens": 4},
               timeout=120).raise_for_status()
    text = httpx.get(url + "/metrics", timeout=30).text
    stats = engine.stats()
    assert stats["accesses"] > 0
    assert metric_value(text, "readme:expert_cache_hits_total") + metric_value(
        text, "readme:expert_cache_misses_total") > 0
    assert metric_value(text, "readme:expert_bytes_moved_total") % stats["expert_bytes"] == 0


def test_overhead_check_times_the_same_request_both_ways(tmp_path):
    """``bench-serve --overhead``: the same greedy request in process and over a loopback server gives the same
    number of tokens both ways, the engine is handed back intact, and the table states the ratio."""
    import readme_jax
    from serve.engine import Engine
    from serve.http import overhead

    folder = str(tiny_moe_folder(tmp_path / "moe"))
    engine = Engine.load(folder, slots=4, max_seqs=1)
    ids = engine.tokenizer.encode(PROMPT, add_special_tokens=True)
    result = overhead.measure(engine, ids, max_tokens=N, repeats=1)
    assert result["output_tokens"] == N and len(result["in_process_tpot_ms"]) == 2
    assert len(result["http_tpot_ms"]) == 1
    assert result["ratio"] == pytest.approx(result["http_tokens_per_s"] / result["in_process_tokens_per_s"])
    assert "HTTP / in process" in overhead.format_table(result)
    assert engine.generate([PROMPT], max_new_tokens=N) == [readme_jax.load(folder).generate(PROMPT, max_new_tokens=N)]
