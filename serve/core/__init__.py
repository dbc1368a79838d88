"""The serving core: requests, pre-gated queues, batching policies, the expert cache and its eviction policies,
the prefetch planner and the metrics. Pure Python over ints and floats (no jax); the simulator
(``serve.sim``) and the real engine (``serve.engine``) both drive it, so both execute the same decisions.
"""
