"""The real serving engine (jax): the host scheduler and expert cache of ``serve.core`` drive the Read-ME model
over a few device expert slots, with continuous batching, per-sequence KV rows and the router one step ahead.

``Engine.load(path, slots=C, cache_policy=..., batching=..., max_seqs=..., prefetch=...)``, then ``generate`` for
texts, or ``submit``/``step``/``abort`` for a serving loop (``serve.http``), ``stats()`` for the counters.
"""

from serve.engine.config import EngineConfig
from serve.engine.engine import Engine
from serve.engine.requests import EngineRecord, LiveRequest, TokenEvent

__all__ = ["Engine", "EngineConfig", "EngineRecord", "LiveRequest", "TokenEvent"]
