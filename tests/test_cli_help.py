"""`o2o --help` and every command's help: fast (no torch, Ray, gymnasium or h5py), consistent."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import click
import typer

from distributed_o2o import __version__
from distributed_o2o.cli.main import app, main


def _commands(group: click.Command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found = [(path, group)]
    for name, command in getattr(group, "commands", {}).items():
        found += _commands(command, path + (name,)) if hasattr(command, "commands") else [(path + (name,), command)]
    return found


COMMANDS = _commands(typer.main.get_command(app))


def test_every_help_loads_no_heavy_library():
    calls = [list(path) + ["--help"] for path, _ in COMMANDS]
    code = ("import sys, json\nfrom distributed_o2o.cli.main import main\n"
            f"for argv in {calls!r}:\n    assert main(argv) == 0, argv\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert len(calls) > 10
    assert not set(json.loads(out.splitlines()[-1])) & {"torch", "ray", "gymnasium", "h5py", "matplotlib"}


def test_help_names_values_not_types_and_every_option_is_explained(capsys):
    for path, command in COMMANDS:
        assert main([*path, "--help"]) == 0
        options = capsys.readouterr().out.partition("Options:")[2]  # (typer labels a positional argument's type)
        assert "<str>" not in options and "<bool>" not in options and "<int>" not in options, path
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.help, f"{' '.join(path)} {param.opts[0]} has no help"


def test_data_help_lists_only_commands_that_exist(capsys):
    assert main(["data", "--help"]) == 0
    text = capsys.readouterr().out
    assert "convert" not in text and all(name in text for name in ("inspect", "collect", "make"))


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"distributed_o2o {__version__}"


def test_every_option_names_itself():
    """Options declare their names ("--algo"): typer before 0.29 made an undeclared option's name
    from its metavar (`--ALGO`), so the same command line failed on such a machine."""
    undeclared = []
    for path, command in COMMANDS:
        callback = getattr(command, "callback", None)
        for name, param in inspect.signature(callback).parameters.items() if callback else []:
            info = param.default
            if isinstance(info, typer.models.OptionInfo) and not info.param_decls:
                undeclared.append(f"{' '.join(path)}: {name}")
    assert not undeclared, undeclared
