"""Routing traces from a real model: held-out domain text routed by a Read-ME folder's router (or the oracle,
or the domain labels) and written in ``serve.sim.trace``'s JSONL format. Uses jax (through ``readme_jax``).
"""
