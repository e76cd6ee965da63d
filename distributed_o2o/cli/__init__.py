"""The `o2o` command line.

Command modules import torch, Ray, gymnasium and h5py inside the commands that need them, so
`o2o --help` (and every `--help`) answers at once.
"""

import typer


def command_group() -> typer.Typer:
    """A Typer app as every `o2o` command group uses it: plain click help (no type labels such
    as <str> or <bool>; option metavars name the value), help when called without a command."""
    return typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
