"""Streams: the caller's own descriptors, given to an action as its stdio.

By default an action's stdout and stderr are captured (``result.stdout``,
``result.stderr``, bounded by the output cap) and its stdin is empty or
the ``stdin=`` bytes.  ``execute(..., streams=Streams(...))`` hands it the
caller's descriptors instead, as ``subprocess`` with ``stdout=fd`` and
bubblewrap do: the action writes straight to the caller's terminal, pipe
or file as it runs, and reads the caller's stdin.  A stream passed this
way is not captured (its ``result`` field is empty) and not capped: the
caller chose where it goes.  ``max_output_bytes`` bounds captured output
only: the preset's (``ResourceLimits.hermetic()``, a safeguard for the
caller's memory) leaves a passed stream alone, while one the caller set
cannot be combined with a passed stdout or stderr (the execution is
refused rather than run unbounded).

The action gets the open file description, not a path: it can write
(or read) it and change its status flags, as any child process can, but
it runs in a session of its own, without a controlling terminal, and
seccomp refuses TIOCSTI and TIOCLINUX (docs/threat-model.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from hermetic.core.errors import SpecError
from hermetic.core.policies import ResourceLimits


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


#: What a stream may be given as: a descriptor or an object with ``fileno()``.
StreamLike = int | _HasFileno | None


@dataclass(frozen=True)
class Streams:
    """Descriptors for an action's stdin, stdout and stderr; None: the default
    (stdin from ``stdin=`` or empty, stdout and stderr captured)."""

    stdin: StreamLike = None
    stdout: StreamLike = None
    stderr: StreamLike = None

    @classmethod
    def inherit(cls) -> Streams:
        """This process's own stdin, stdout and stderr (those that are open),
        as a shell gives them to a command."""
        fds = [fd if _is_open(fd) else None for fd in (0, 1, 2)]
        return cls(*fds)

    def fds(self) -> tuple[int, int, int]:
        """The three descriptors, -1 for a stream not given; each checked open.

        Raises SpecError naming the stream that is not a descriptor or not open.
        """
        out = []
        for name in ("stdin", "stdout", "stderr"):
            given = getattr(self, name)
            if given is None:
                out.append(-1)
                continue
            fd = given if isinstance(given, int) else _fileno(given, name)
            if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
                raise SpecError(
                    f"streams.{name} must be a file descriptor, got {given!r}",
                    field=f"streams.{name}",
                    value=given,
                )
            if not _is_open(fd):
                raise SpecError(
                    f"streams.{name}: descriptor {fd} is not open",
                    field=f"streams.{name}",
                    value=fd,
                )
            out.append(fd)
        return out[0], out[1], out[2]


def _fileno(given: object, name: str) -> object:
    fileno = getattr(given, "fileno", None)
    if fileno is None:
        raise SpecError(
            f"streams.{name} must be a file descriptor or have fileno(), got "
            f"{type(given).__name__}",
            field=f"streams.{name}",
            value=given,
        )
    try:
        return fileno()
    except (OSError, ValueError) as e:  # closed, or io.UnsupportedOperation
        raise SpecError(
            f"streams.{name} has no usable descriptor: {e}", field=f"streams.{name}", value=given
        ) from None


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def caps_output(limits: ResourceLimits) -> bool:
    """Whether the caller set ``max_output_bytes`` (rather than leaving the
    preset's): then output must be captured to be bounded."""
    return bool(limits.max_output_bytes) and not limits.is_default("max_output_bytes")


def check_streams(
    streams: Streams | None, stdin: bytes | None, limits: ResourceLimits
) -> tuple[int, int, int]:
    """The descriptors to pass for ``execute(..., stdin=, streams=)``.

    Refuses stdin bytes together with a passed stdin, anything but a
    Streams, and a passed stdout or stderr under an output limit the
    caller set.
    """
    if streams is None:
        return -1, -1, -1
    if not isinstance(streams, Streams):
        raise SpecError(
            f"streams must be a Streams, got {type(streams).__name__}",
            field="streams",
            value=streams,
        )
    fds = streams.fds()
    if fds[0] >= 0 and stdin is not None:
        raise SpecError(
            "stdin bytes and streams.stdin may not both be given", field="stdin", value=None
        )
    if caps_output(limits) and (fds[1] >= 0 or fds[2] >= 0):
        raise SpecError(
            f"the spec's max_output_bytes ({limits.max_output_bytes}) bounds captured output; "
            "a stdout or stderr passed in streams would not be bounded",
            field="streams",
            value=None,
        )
    return fds
