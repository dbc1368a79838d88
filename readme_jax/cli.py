"""The one command-line parser of readme-jax: ``readme-jax <command> ...``.

The parser lives here, at the top of the program, but the commands come from the packages that own them:
each package lists its command modules under the entry-point group ``readme_jax.commands`` in
``pyproject.toml`` (the library's own ``readme_jax.commands.*``, ``train.cli``, ``serve.cli``), and this module
discovers them with ``importlib.metadata``. So the library never imports the layers above it.

A command module exposes ``register(subparsers)``: it adds ``argparse`` sub-parsers and sets ``func`` (called
with the parsed namespace, returns an exit code). A module that fails to import, or has no ``register``, is an
error that names it, never a silent skip. Bad input raises :class:`readme_jax.errors.ReadmeJaxError`; here it
becomes one ``error:`` line and exit code 2, never a bare traceback.
"""

import argparse
import importlib.metadata
import sys

from readme_jax.errors import ReadmeJaxError

GROUP = "readme_jax.commands"


class CommandPluginError(ReadmeJaxError):
    """A registered command module cannot be used."""


def command_entry_points() -> list[importlib.metadata.EntryPoint]:
    """The registered command modules, in registration order (one per name)."""
    found = {}
    for ep in importlib.metadata.entry_points(group=GROUP):
        found.setdefault(ep.name, ep)  # an editable and a regular install may both list a plugin
    if not found:
        raise CommandPluginError(f"no commands are registered under the entry-point group {GROUP!r}: readme-jax is "
                                 f"not installed in this environment (run `make setup`)")
    return list(found.values())


def load_command_module(ep: importlib.metadata.EntryPoint):
    try:
        module = ep.load()
    except Exception as exc:  # any failure: the message must name the module
        raise CommandPluginError(f"command plugin {ep.name!r} (module {ep.value!r}) failed to import: "
                                 f"{type(exc).__name__}: {exc}") from exc
    if not callable(getattr(module, "register", None)):
        raise CommandPluginError(f"command plugin {ep.name!r} (module {ep.value!r}) has no register(subparsers)")
    return module


def build_parser(entry_points=None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="readme-jax",
        description="Read-ME in JAX: pre-gated mixture of experts carved out of a dense Llama.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in command_entry_points() if entry_points is None else entry_points:
        load_command_module(ep).register(sub)
    return parser


def main(argv=None, entry_points=None) -> int:
    """Run one command; ``entry_points`` replaces the registry (e.g. where the project is not installed)."""
    try:
        parser = build_parser(entry_points)
    except ReadmeJaxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
