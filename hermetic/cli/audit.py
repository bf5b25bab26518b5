"""``hermetic audit``: summarise an audit log."""

from __future__ import annotations

import argparse
import json
import os

from hermetic.cli.files import MAX_AUDIT_BYTES, _audit_lines
from hermetic.cli.output import _fail, _say
from hermetic.cli.usage import Subcommands, _describe
from hermetic.core.bounded import open_regular
from hermetic.core.errors import SpecError
from hermetic.exits import EXIT_SPEC


def add(sub: Subcommands) -> None:
    """Add ``hermetic audit``'s parser, and its command, to ``sub``."""
    audit = sub.add_parser(
        "audit",
        help="summarise an audit log (JSON Lines)",
        description=_describe(
            "Summarise an audit log, as --audit-log writes it: how many violations, in how "
            "many executions, by kind and by decision.",
            "Exit status: 0 when the log was summarised, 123 when it cannot be read or is not "
            "an audit log.",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    audit.add_argument("file", metavar="FILE", help="the audit log (JSON Lines)")
    audit.add_argument("--json", action="store_true", help="print the summary as JSON")
    audit.set_defaults(func=_cmd_audit, cmd_parser=audit)


def _cmd_audit(ns: argparse.Namespace) -> int:
    from hermetic.security.audit import parse, summarize_records

    try:
        fd = open_regular(ns.file, "audit log", MAX_AUDIT_BYTES)
        try:
            summary = summarize_records(parse(_audit_lines(fd, ns.file), ns.file))
        finally:
            os.close(fd)
    except SpecError as e:
        return _fail(str(e), EXIT_SPEC)
    except OSError as e:
        return _fail(f"cannot read audit log {ns.file!r}: {e.strerror}", EXIT_SPEC)
    except ValueError as e:
        return _fail(f"invalid audit log: {e}", EXIT_SPEC)
    if ns.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['records']} violation(s) in {summary['executions']} execution(s)")
    for title, key in (("kind", "by_kind"), ("decision", "by_decision")):
        for name, count in summary[key].items():
            _say(f"  {title} {name:12} {count}")
    return 0
