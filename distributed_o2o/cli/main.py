"""Entry point of the `o2o` console script.

Bad input raises `UserError`; here it becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import typer

from distributed_o2o import __version__
from distributed_o2o.cli import command_group, config, data, demo, finetune, plot, pretrain, status, study, zoo
from distributed_o2o.errors import UserError

app = command_group()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"distributed_o2o {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Offline-to-online and policy-only RL fine-tuning (PORL, O2O-RL) on Ray."""


app.add_typer(data.app, name="data", help="Inspect, collect and make offline datasets.")
app.add_typer(config.app, name="config", help="Show an algorithm's config: every field, its value and what it does.")
app.add_typer(zoo.app, name="zoo", help="The shipped behaviour-policy zoo: list it, or build an entry from a SAC run.")
pretrain.register(app)
finetune.register(app)
demo.register(app)
study.register(app)
plot.register(app)
status.register(app)


def main(argv: list[str] | None = None) -> int:
    try:
        code = app(args=argv, standalone_mode=False)  # a command's `typer.Exit(code)` comes back as its code
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 1
    except typer.TyperException as exc:  # usage errors (a bad option value): click's message, exit 2
        exc.show()
        return exc.exit_code
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
