"""The project's one exception base for bad input, defined at the bottom layer so that every layer can raise it.

``kernels`` imports nothing from the packages above it (``readme_jax``, ``train``, ``serve``), so the base class
that all of them share lives here; ``readme_jax.errors`` re-exports it under the name the rest of the project
uses. The CLI catches it and prints one ``error: ...`` line (no traceback) with a non-zero exit code. Importing
this module imports no jax, so the pure-Python serving core may use it too.
"""


class ReadmeJaxError(Exception):
    """Bad input or a broken artifact; the message names the problem."""
