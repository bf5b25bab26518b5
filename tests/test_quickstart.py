"""The README's quick starts run exactly as written, as root and as a normal user.

A fenced block of README.md is run when the line before it is
``<!-- quickstart -->`` (docs/development.md, "Marking a README example as
runnable", is the convention):

- a ``console`` block: every ``$ `` line is a command (continued after a
  trailing backslash, and up to the end marker of a here-document), run
  with ``sh -c``; the lines under it are the output the README shows;
- a ``python`` block: run as a script by this interpreter; a ``text`` block
  marked ``<!-- quickstart: output -->`` right after it is its output.

Each block runs in a fresh temporary directory (outside the checkout: CI
installs the package non-editable, and the checkout's hermetic/ has no
compiled core), with the installed package's ``bin/`` first on PATH, once
as the suite's caller (root) and once as the unprivileged test user.  Every
command must exit with status 0, and every line the README shows must
appear in what it printed, in order within its stream; ``...`` in a line
matches any text, and a line that is only ``...`` marks lines left out.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

pytestmark = pytest.mark.linux

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
MARK = "<!-- quickstart -->"
OUTPUT_MARK = "<!-- quickstart: output -->"
#: A line of shown output that stands for lines left out.
OMITTED = "..."
#: ``<<EOF``, ``<<'EOF'``, ``<<-"EOF"``: the word that ends a here-document.
HEREDOC = re.compile(r"<<-?\s*(['\"]?)(\w+)\1")
#: Generous: a command that takes this long is stuck, not slow.
COMMAND_TIMEOUT = 300


@dataclass(frozen=True)
class Command:
    """One ``$`` command of a console block and the output shown under it."""

    text: str
    shown: tuple[str, ...]


@dataclass(frozen=True)
class Example:
    """A marked block of the README, with where it starts (for messages)."""

    kind: str  # "console" or "python"
    line: int
    commands: tuple[Command, ...] = ()
    code: str = ""
    shown: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"README.md:{self.line}-{self.kind}"


def _fence(lines: list[str], start: int, where: str) -> tuple[str, list[str], int]:
    """The fenced block opening at ``lines[start]``: its language, its lines
    and the index after its closing fence."""
    opening = lines[start].strip() if start < len(lines) else ""
    if not opening.startswith("```") or opening == "```":
        raise ValueError(f"README.md:{start}: {where} must be followed by a fenced block")
    end = start + 1
    while end < len(lines) and lines[end].strip() != "```":
        end += 1
    if end == len(lines):
        raise ValueError(f"README.md:{start + 1}: the fenced block is not closed")
    return opening[3:].strip(), lines[start + 1 : end], end + 1


def _commands(body: list[str], line: int) -> tuple[Command, ...]:
    commands: list[Command] = []
    i = 0
    while i < len(body):
        if not body[i].startswith("$ "):
            raise ValueError(f"README.md:{line + i + 1}: output before the first '$ ' command")
        text = [body[i][2:]]
        i += 1
        while text[-1].endswith("\\") and i < len(body):
            text.append(body[i])
            i += 1
        heredoc = HEREDOC.search(text[0])
        if heredoc is not None:
            while i < len(body) and body[i] != heredoc.group(2):
                text.append(body[i])
                i += 1
            if i == len(body):
                raise ValueError(f"README.md:{line}: here-document {heredoc.group(2)} not ended")
            text.append(body[i])
            i += 1
        shown = []
        while i < len(body) and not body[i].startswith("$ "):
            shown.append(body[i])
            i += 1
        commands.append(Command("\n".join(text), tuple(shown)))
    return tuple(commands)


def parse(text: str) -> list[Example]:
    """The marked examples of ``text`` (README.md), in order."""
    lines = text.splitlines()
    found: list[Example] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped == OUTPUT_MARK:
            raise ValueError(f"README.md:{i + 1}: an output block must follow a python example")
        if stripped != MARK:
            i += 1
            continue
        lang, body, i = _fence(lines, i + 1, MARK)
        start = i - len(body) - 1
        if lang == "console":
            found.append(Example("console", start, commands=_commands(body, start)))
        elif lang == "python":
            shown: tuple[str, ...] = ()
            after = i
            while after < len(lines) and not lines[after].strip():
                after += 1
            if after < len(lines) and lines[after].strip() == OUTPUT_MARK:
                out_lang, out, i = _fence(lines, after + 1, OUTPUT_MARK)
                if out_lang != "text":
                    raise ValueError(f"README.md:{after + 2}: an output block is ```text")
                shown = tuple(out)
            found.append(Example("python", start, code="\n".join(body) + "\n", shown=shown))
        else:
            raise ValueError(f"README.md:{start}: a quickstart block is console or python")
    return found


def _pattern(line: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in line.rstrip().split("...")))


def missing_lines(shown: Sequence[str], stdout: str, stderr: str) -> list[str]:
    """The lines of ``shown`` that do not appear in the output, each
    searched for in stdout and then stderr, after the last line matched in
    that stream."""
    streams = [[x.rstrip() for x in stdout.splitlines()], [x.rstrip() for x in stderr.splitlines()]]
    cursors = [0, 0]
    missing = []
    for line in shown:
        if line.strip() == OMITTED:
            continue
        pattern = _pattern(line)
        for n, stream in enumerate(streams):
            hit = next(
                (k for k in range(cursors[n], len(stream)) if pattern.fullmatch(stream[k])), None
            )
            if hit is not None:
                cursors[n] = hit + 1
                break
        else:
            missing.append(line)
    return missing


EXAMPLES = parse(README.read_text())


# -- the parser and the matcher, on text of their own ------------------------


def test_the_convention_is_parsed_as_documented() -> None:
    text = "\n".join(
        [
            "```console",
            "$ not run",
            "```",
            MARK,
            "```console",
            "$ printf 'a\\nb\\n' \\",
            "    > f",
            "$ cat > g <<'EOF'",
            "$ not a command",
            "EOF",
            "$ cat f",
            "a",
            "...",
            "```",
            "",
            MARK,
            "```python",
            "print(1)",
            "```",
            "",
            OUTPUT_MARK,
            "```text",
            "1",
            "```",
        ]
    )
    console, python = parse(text)
    assert [c.text for c in console.commands] == [
        "printf 'a\\nb\\n' \\\n    > f",
        "cat > g <<'EOF'\n$ not a command\nEOF",
        "cat f",
    ]
    assert console.commands[2].shown == ("a", "...")
    assert (python.code, python.shown) == ("print(1)\n", ("1",))
    with pytest.raises(ValueError, match="fenced block"):
        parse(MARK + "\ntext")
    with pytest.raises(ValueError, match="output before"):
        parse(MARK + "\n```console\noutput\n```")


def test_shown_lines_must_appear_in_order_with_placeholders() -> None:
    out = "one\n  two: 0.25,\nthree\n"
    assert missing_lines(["one", "...", "  two: ...,", "three"], out, "") == []
    assert missing_lines(["three", "one"], out, "") == ["one"]
    assert missing_lines(["two"], out, "") == ["two"]  # a whole line, not a part
    assert missing_lines(["warning", "one"], out, "warning\n") == []


def test_the_readme_marks_console_and_python_quick_starts() -> None:
    kinds = [e.kind for e in EXAMPLES]
    assert kinds.count("console") >= 3 and kinds.count("python") >= 1, kinds
    assert all(e.commands or e.code for e in EXAMPLES)
    assert any(e.shown for e in EXAMPLES if e.kind == "python")


def test_the_readme_keeps_its_two_set_up_commands() -> None:
    # A fresh machine's two commands: install and run the default example,
    # then the test suite (.ci/run runs that same suite).
    text = README.read_text()
    assert re.search(
        r"^/usr/bin/python3 -m venv /opt/hermetic && /opt/hermetic/bin/pip install '\.\[test\]' "
        r"&& /opt/hermetic/bin/hermetic run -- ",
        text,
        re.M,
    )
    assert re.search(r"^/opt/hermetic/bin/pytest$", text, re.M)


# -- running the examples ----------------------------------------------------


@pytest.fixture
def workdir(runner: Any) -> Iterator[str]:
    """A fresh, empty directory outside the checkout, owned by whoever runs
    the sandbox (conftest's ``runner``: the suite's caller, or the test user)."""
    path = os.path.realpath(tempfile.mkdtemp(prefix="hermetic-test-qs-"))
    try:
        # Outside the checkout, whose hermetic/ (no compiled core) would
        # shadow the installed package for an interpreter started here.
        assert not pathlib.Path(path).is_relative_to(README.parent), path
        runner.own(path)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _env(home: str) -> dict[str, str]:
    bindir = os.path.dirname(sys.executable)
    assert os.access(os.path.join(bindir, "hermetic"), os.X_OK), (
        f"the installed package's command is missing from {bindir}"
    )
    # XDG_RUNTIME_DIR, as a login session has one: the launcher's daemon
    # keeps its socket there, so it goes with the example's directory.
    return {
        "PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": home,
        "XDG_RUNTIME_DIR": home,
    }


def _run(runner: Any, argv: list[str], cwd: str) -> subprocess.CompletedProcess[str]:
    if runner.user is not None:
        from conftest import _as_user_cmd

        argv = _as_user_cmd(runner.user, argv)
    return subprocess.run(
        argv,
        cwd=cwd,
        env=_env(cwd),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )


def _check(what: str, p: subprocess.CompletedProcess[str], shown: Sequence[str]) -> None:
    said = f"{what}\n--- stdout:\n{p.stdout}--- stderr:\n{p.stderr}"
    assert p.returncode == 0, f"exit status {p.returncode}: {said}"
    missing = missing_lines(shown, p.stdout, p.stderr)
    assert not missing, f"the README shows {missing} but {said}"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
def test_the_readme_example_runs_as_written(example: Example, runner: Any, workdir: str) -> None:
    who = f"as uid {os.geteuid() if runner.user is None else runner.user.pw_uid}"
    if example.kind == "python":
        p = _run(runner, [sys.executable, "-c", example.code], workdir)
        _check(f"{example.name} {who}", p, example.shown)
        return
    for command in example.commands:
        p = _run(runner, ["sh", "-c", command.text], workdir)
        _check(f"{example.name} {who}: $ {command.text}", p, command.shown)
