"""The serving simulator: cost model, workloads and trace files, the event simulator, cache replay, and the
``bench-cache`` / ``bench-sched`` benchmarks with their plots. Pure Python (no jax): it drives ``serve.core``
under modelled costs.
"""
