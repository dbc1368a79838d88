"""The serving commands, registered with the project's one parser (``readme_jax.cli``) through the
``readme_jax.commands`` entry point.

Each room of ``serve/`` owns its commands and its flags:

- ``serve.sim.cli``: ``bench-cache`` and ``bench-sched`` (the simulator; no jax);
- ``serve.routing.cli``: ``trace`` (held-out text routed by a real model -> a JSONL routing trace);
- ``serve.engine.cli``: ``bench-engine`` (the real engine on a workload, per policy pair);
- ``serve.http.cli``: ``serve`` (the OpenAI-compatible HTTP server) and ``bench-serve`` (its benchmark client).
"""

from serve.engine import cli as engine_cli
from serve.http import cli as http_cli
from serve.routing import cli as routing_cli
from serve.sim import cli as sim_cli


def register(sub) -> None:
    routing_cli.register(sub)
    sim_cli.register(sub)
    engine_cli.register(sub)
    http_cli.register(sub)
