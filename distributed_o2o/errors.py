"""The one exception type for bad user input.

A `UserError` carries one line that names the problem and the fix. The CLI prints it
without a traceback and exits with code 2; library callers can catch it.
"""


class UserError(Exception):
    """Bad input from the user: a dataset, checkpoint, config or env that cannot be used."""


def first_line(text: str) -> str:
    """The first non-blank line of an error text (a remote traceback, an exception message)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "no reason given"
