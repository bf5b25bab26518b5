"""``hermetic spec``: validate a spec file and print it with its digest."""

from __future__ import annotations

import argparse
import sys

from hermetic.cli.files import _read_spec
from hermetic.cli.output import _fail
from hermetic.cli.usage import Subcommands, _describe
from hermetic.core.errors import SpecError
from hermetic.core.spec import SandboxSpec
from hermetic.exits import EXIT_SPEC


def add(sub: Subcommands) -> None:
    """Add ``hermetic spec``'s parser, and its command, to ``sub``."""
    spec = sub.add_parser(
        "spec",
        help="validate a spec file and print it with its digest",
        description=_describe(
            "Validate a spec file and print it in full, every default written out, as JSON "
            "on stdout; its digest goes to stderr.",
            "Exit status: 0 when the spec is valid, 123 when it is invalid or cannot be read.",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    spec.add_argument("file", metavar="FILE", help="the spec file (JSON)")
    spec.set_defaults(func=_cmd_spec, cmd_parser=spec)


def _cmd_spec(ns: argparse.Namespace) -> int:
    try:
        spec = SandboxSpec.from_json(_read_spec(ns.file))
        spec.validate()
    except OSError as e:
        return _fail(f"cannot read spec file {ns.file!r}: {e.strerror}", EXIT_SPEC)
    except SpecError as e:
        if e.field == "spec file":  # the message names the file already
            return _fail(f"invalid spec: {e}", EXIT_SPEC)
        return _fail(f"invalid spec {ns.file!r}: {e}", EXIT_SPEC)
    print(spec.to_json())
    print(f"digest: {spec.digest()}", file=sys.stderr)
    return 0
