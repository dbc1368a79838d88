"""The command registry: every package's commands appear in ``readme-jax --help``; a broken plugin is one
``error:`` line naming its module, never a silent skip."""

import importlib.metadata
import subprocess
import sys

import pytest

from readme_jax import cli

EXPECTED = ("generate", "profile", "refactor", "train", "eval", "analyze", "trace", "bench", "bench-cache",
            "bench-sched")


def _subcommands(parser) -> set[str]:
    actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return set(actions[0].choices)


def test_help_lists_every_command():
    assert set(EXPECTED) <= _subcommands(cli.build_parser())
    out = subprocess.run([sys.executable, "-m", "readme_jax.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for name in EXPECTED:
        assert f"    {name}" in out.stdout


def test_every_package_registers_through_entry_points():
    values = {ep.value for ep in cli.command_entry_points()}
    assert {"train.cli", "serve.cli"} <= values
    assert all(not v.startswith(("train", "serve")) or v in ("train.cli", "serve.cli") for v in values)


def _ep(name, value):
    return importlib.metadata.EntryPoint(name=name, value=value, group=cli.GROUP)


def test_broken_plugin_is_one_error_line_naming_the_module(monkeypatch, capsys):
    broken = [_ep("generate", "readme_jax.commands.generate"), _ep("broken", "tests.no_such_plugin_module")]
    monkeypatch.setattr(cli, "command_entry_points", lambda: broken)
    assert cli.main(["generate", "--help"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: command plugin 'broken' (module 'tests.no_such_plugin_module') "
                                              "failed to import: ModuleNotFoundError")


def test_plugin_without_register_is_an_error(monkeypatch):
    monkeypatch.setattr(cli, "command_entry_points", lambda: [_ep("json", "json")])
    with pytest.raises(cli.CommandPluginError, match=r"plugin 'json' \(module 'json'\) has no register"):
        cli.build_parser()


def test_no_registered_commands_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [])
    with pytest.raises(cli.CommandPluginError, match="not installed.*make setup"):
        cli.command_entry_points()
