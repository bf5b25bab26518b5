"""The exit statuses of the command line and the launcher, in one place.

An action that ran gives its own status (128+N when signal N ended it);
one that did not run gives one of these, as timeout(1) and the shells do
for their own failures.
"""

from __future__ import annotations

import errno

from hermetic.core.errors import HermeticError, SandboxError, SpecError

#: The spec or the command line (or a launcher's request) is invalid.
EXIT_SPEC = 123
#: The action timed out, and its sandbox was killed.
EXIT_TIMEOUT = 124
#: The sandbox could not be set up, or this host cannot apply the spec.
EXIT_SETUP = 125
#: The command was found but could not be executed.
EXIT_NOEXEC = 126
#: The command was not found in the sandbox.
EXIT_NOTFOUND = 127


def failure_status(error: HermeticError) -> tuple[int, str]:
    """The exit status and the one-line message for an action that could
    not run because of ``error``."""
    if isinstance(error, SpecError):
        return EXIT_SPEC, f"invalid spec: {error}"
    if isinstance(error, SandboxError) and error.stage == "exec":
        return (EXIT_NOTFOUND if error.errno == errno.ENOENT else EXIT_NOEXEC), str(error)
    return EXIT_SETUP, str(error)
