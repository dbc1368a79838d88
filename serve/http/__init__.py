"""The OpenAI-compatible HTTP server over ``serve.engine.Engine`` (FastAPI + uvicorn, the ``server`` extra).

- ``protocol``: request validation and the OpenAI error envelope;
- ``loop``: the engine thread (the only code that touches the engine) and admission control (429);
- ``detok``: incremental, UTF-8-safe detokenisation and stop strings;
- ``streaming``: one request's answer, whole or as server-sent events;
- ``metrics``: Prometheus metrics; ``app``: the FastAPI app; ``server``: uvicorn with a SIGTERM drain;
- ``bench``: ``readme-jax bench-serve``, the client that measures a server as vLLM's ``bench serve`` does.
"""
