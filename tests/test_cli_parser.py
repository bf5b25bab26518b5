"""The command line's parser as the package assembles it: a command line
that names its subcommand first gets that subcommand's parser alone, which
parses and describes exactly as the whole parser does, and imports no other
subcommand's module."""

from __future__ import annotations

import argparse
import ast
import importlib
import subprocess
import sys
from collections.abc import Sequence

import pytest

from hermetic.cli import COMMANDS, _parser

#: A command line each subcommand accepts, as parsed (nothing is run).
ACCEPTED = {
    "run": ["run", "--json", "--memory", "1G", "-i", "/usr", "--", "true"],
    "verify": ["verify", "--runs", "3", "--stdin", "--", "true"],
    "digest": ["digest", "--hash-system", "--allow-host", "a.ex:80", "--", "true"],
    "doctor": ["doctor", "--json"],
    "audit": ["audit", "--json", "/tmp/audit.jsonl"],
    "serve": ["serve", "--idle-timeout", "5"],
    "spec": ["spec", "/tmp/spec.json"],
    "runner": ["runner", "--listen", "unix:/tmp/r.sock", "--concurrency", "2"],
    "worker": ["worker", "--server", "grpc://h:1", "--instance", "i", "--platform", "k=v"],
}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_the_table_names_every_subcommand_once_in_the_order_help_lists_them() -> None:
    names = [name for name, _, _ in COMMANDS]
    assert sorted(names) == sorted(ACCEPTED) and len(set(names)) == len(names)
    assert list(_subparsers(_parser())) == names
    for name, module, add in COMMANDS:
        assert callable(getattr(importlib.import_module(f"hermetic.cli.{module}"), add)), name


@pytest.mark.parametrize("name", [name for name, _, _ in COMMANDS])
def test_one_subcommands_parser_parses_and_describes_as_the_whole_one(name: str) -> None:
    whole, alone = _parser(), _parser(name)
    assert list(_subparsers(alone)) == [name]
    argv: Sequence[str] = ACCEPTED[name]
    a, a_unknown = whole.parse_known_args(argv)
    b, b_unknown = alone.parse_known_args(argv)
    assert a_unknown == b_unknown == []
    assert a.cmd_parser.format_help() == b.cmd_parser.format_help()
    assert {**vars(a), "cmd_parser": None} == {**vars(b), "cmd_parser": None}
    assert a.cmd_parser.format_usage() == b.cmd_parser.format_usage()


#: What a run through main() leaves in sys.modules of the package.
LOADED = """
import sys
from hermetic.cli import main
code = main({argv!r})
print(sorted(m for m in sys.modules if m.startswith("hermetic.cli.")))
sys.exit(code)
"""


@pytest.mark.linux
def test_hermetic_run_imports_no_other_subcommands_module() -> None:
    p = subprocess.run(
        [sys.executable, "-c", LOADED.format(argv=["run", "--", "true"])],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    loaded = set(ast.literal_eval(p.stdout.splitlines()[-1]))
    assert "hermetic.cli.run" in loaded
    others = {f"hermetic.cli.{module}" for name, module, _ in COMMANDS if module != "run"}
    assert loaded & others == set()


def test_top_level_help_and_an_unknown_subcommand_still_name_them_all() -> None:
    names = [name for name, _, _ in COMMANDS]
    for argv in (["--help"], ["no-such-command"], ["--help", "run"]):
        p = subprocess.run(
            [sys.executable, "-m", "hermetic", *argv],
            capture_output=True,
            text=True,
            cwd="/",
            timeout=120,
        )
        said = p.stdout + p.stderr
        assert all(name in said for name in names), (argv, said)
    assert p.returncode == 0 and p.stdout.startswith("usage: hermetic [-h]")


@pytest.mark.parametrize("name", [name for name, _, _ in COMMANDS])
def test_every_subcommands_help_ends_with_its_exit_statuses_in_a_paragraph(name: str) -> None:
    sub = _subparsers(_parser(name))[name]
    assert sub.description is not None
    paragraphs = sub.description.split("\n\n")
    said = [i for i, p in enumerate(paragraphs) if p.startswith("Exit status:")]
    # The last paragraph, or the one before the table of the shared statuses.
    assert said and said[-1] >= len(paragraphs) - 2, paragraphs
    text = sub.format_help()
    assert "\n\nExit status:" in text  # kept a paragraph of its own, not run in
    assert all(len(line) <= 80 for line in text.splitlines()), text
