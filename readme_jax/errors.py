"""The one exception type that user-facing code raises for bad input.

The CLI catches it and prints a single ``error: ...`` line (no traceback) with a non-zero exit code.
Importing this module imports no jax, so the pure-Python serving code may use it too.
"""


class ReadmeJaxError(Exception):
    """Bad input or a broken artifact; the message names the problem."""
