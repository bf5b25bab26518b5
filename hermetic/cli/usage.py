"""How the command line describes itself: its parser, which fails with
the documented status, and the --help texts, which quote these statuses.

Exit status of ``hermetic run``: the action's own status, or 128+N when a
signal N ended it; of ``hermetic verify``: 0 when the runs agree, 1 when
they differ; of both otherwise one of

  123  the spec or the command line is invalid
  124  the action timed out (and was killed)
  125  the sandbox could not be set up, or this host cannot apply the spec
  126  the command was found but could not be executed
  127  the command was not found in the sandbox
"""

from __future__ import annotations

import argparse
from typing import NoReturn, TypeAlias

from hermetic.cli.output import _one_line
from hermetic.exits import EXIT_SPEC

#: What each subcommand's ``add`` is given: the parser's subcommands (a
#: type for the checker alone: argparse's class is not generic at run time).
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class _Parser(argparse.ArgumentParser):
    """Exits with EXIT_SPEC (123) on a bad command line, as documented,
    instead of argparse's 2, and says so on one line (an error is one line;
    the usage is a --help away)."""

    def error(self, message: str) -> NoReturn:
        text = _one_line(f"{message} (see '{self.prog} --help')")
        self.exit(EXIT_SPEC, f"{self.prog}: error: {text}\n")


#: The exit statuses every action subcommand shares, as the module's
#: docstring lists them (one text, so the two cannot drift apart).
_EXIT_CODES = tuple(line for line in __doc__.splitlines() if line.startswith("  12"))


def _describe(*paragraphs: str, status: str | None = None, codes: str = "") -> str:
    """A --help description: paragraphs wrapped to a terminal's width, then
    the exit statuses (those of ``codes``, else all), kept in their columns."""
    import textwrap

    text = "\n\n".join(textwrap.fill(p, 76) for p in paragraphs)
    if status is not None:
        listed = [line for line in _EXIT_CODES if not codes or line.split()[0] in codes.split()]
        text += "\n\n" + textwrap.fill(status, 76) + "\n\n" + "\n".join(listed)
    return text
