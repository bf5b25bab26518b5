"""What the command line writes for a person: lines that a name from outside
(a file an action made, a log entry) cannot turn into terminal commands,
and errors on one bounded line."""

from __future__ import annotations

import re
import sys

#: The longest message printed; a longer one (a path of 100,000
#: characters, say) is cut, saying how long it was.
MAX_MESSAGE = 4000


#: Characters a terminal acts on: C0 and C1 controls, DEL, and the
#: bidirectional overrides that reorder what is shown.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _printable(text: str) -> str:
    """``text`` as it can be written to any stream and shown as it is:
    surrogates (a name JSON could hold and UTF-8 cannot) escaped as
    ``\\udXXX``, and every control character as ``\\xNN`` or
    ``\\uNNNN``, so that a name an action chose cannot drive the
    caller's terminal (move the cursor, clear the screen, forge lines)."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROLS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _one_line(text: str) -> str:
    """A message on one line, of bounded length: an error is one line."""
    text = _printable(text)
    if len(text) > MAX_MESSAGE:
        text = f"{text[:MAX_MESSAGE]}... ({len(text)} characters)"
    return text


def _say(text: str) -> None:
    """Print a line of output holding text from outside (file names, log entries)."""
    print(_printable(text))


def _fail(message: str, code: int) -> int:
    print(f"hermetic: {_one_line(message)}", file=sys.stderr)
    return code
