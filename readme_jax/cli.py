"""The one command-line parser of readme-jax: ``readme-jax <command> ...``.

Each command lives in its own module, which exposes ``register(subparsers)``; that function adds an
``argparse`` sub-parser and sets ``func`` (called with the parsed namespace, returns an exit code).
Bad input raises :class:`readme_jax.errors.ReadmeJaxError`; here it becomes one ``error:`` line and
exit code 2, never a bare traceback.
"""

import argparse
import importlib
import sys

from readme_jax.errors import ReadmeJaxError

# Modules that contribute sub-commands, in help order.
COMMAND_MODULES = (
    "readme_jax.commands.generate",
    "readme_jax.commands.pipeline",
    "readme_jax.commands.train",
    "readme_jax.commands.trace",
    "readme_jax.commands.bench",
    "serve.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="readme-jax",
        description="Read-ME in JAX: pre-gated mixture of experts carved out of a dense Llama.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a command module not written yet: skip it
            if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
                continue
            raise
        module.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ReadmeJaxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
