"""``hermetic runner``: Buildbarn's runner protocol, served by hermetic's sandbox.

bb_worker stages an action's input root in its build directory, then asks a
runner over a Unix socket to run the command (buildbarn.runner.Runner, in
hermetic/remote/proto/runner.proto).  This server answers that protocol with
one :class:`hermetic.HermeticExecutor` per Run, so bb_worker can use hermetic
in place of bb_runner.  The protocol code is generated
(hermetic/remote/proto/generate.py); this module only maps a request to a
spec and a result to a response.

The mapping, per Run (paths in the request are relative to the build
directory and may not leave it):

- the input root is an input (read-only), as are the base spec's inputs
  (the toolchain, without --spec);
- the directories inside the input root that are empty when Run starts are
  outputs (writable).  The protocol does not carry the action's outputs:
  bb_worker creates the parent directory of each declared output before it
  calls Run, and those are the empty directories of a freshly staged input
  root.  An input directory that happens to be empty holds nothing to
  protect.  Anything else of the input root stays read-only: an action that
  writes beside its inputs is refused (fails closed);
- the temporary directory is a temp (writable);
- the environment is exactly the request's: the spec's own is replaced;
- stdout and stderr go to new files at the requested paths (created as
  bb_runner creates them: exclusive, never through a symbolic link), given
  to the action as its descriptors;
- the working directory is the input root's ``working_directory``.

The response has the exit code (-1 with the signal's name in the resource
usage when a signal ended the action, as bb_runner reports it) and a
``buildbarn.resourceusage.POSIXResourceUsage`` in an Any with the figures
hermetic measures (user and system time, block operations).  A cancelled
Run (bb_worker's timeout, or its own shutdown) ends the sandbox.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import socket
import stat
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, empty_pb2

from hermetic import (
    EnvSet,
    ExecutionResult,
    HermeticError,
    HermeticExecutor,
    PathSet,
    SandboxError,
    SandboxSpec,
    SpecError,
    Streams,
    UnsupportedError,
)
from hermetic.remote.proto import resourceusage_pb2, runner_pb2, runner_pb2_grpc

#: Errnos of a command that could not be started for a reason of its own
#: (no such program, not executable): the request's fault, as bb_runner says.
_BAD_COMMAND = frozenset({errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.EISDIR, errno.ENOTDIR})

#: What an open of a log file (stdout_path, stderr_path) failing means.
_OPEN_CODES = {
    errno.ENOENT: grpc.StatusCode.NOT_FOUND,
    errno.EEXIST: grpc.StatusCode.ALREADY_EXISTS,
    errno.EACCES: grpc.StatusCode.PERMISSION_DENIED,
    errno.EPERM: grpc.StatusCode.PERMISSION_DENIED,
}


class RequestError(Exception):
    """A Run or CheckReadiness that cannot go on: the gRPC status to end it with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _relative(path: str, what: str) -> tuple[str, ...]:
    """The components of ``path``, a path relative to the build directory
    (or the input root) as the request gives it: no absolute path, no
    ``..``, nothing that is not a file name."""
    if "\0" in path or path.startswith("/"):
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT, f"{what} must be a relative path: {path!r}"
        )
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    if ".." in parts:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT, f"{what} may not contain '..': {path!r}"
        )
    return parts


def _directory(base: str, path: str, what: str) -> str:
    """The absolute, symlink-free path of the directory ``path`` below
    ``base``, which it may not leave (a symbolic link that points out is
    refused, not followed out)."""
    joined = os.path.join(base, *_relative(path, what))
    real = os.path.realpath(joined)
    if os.path.commonpath([real, base]) != base:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT, f"{what} {path!r} leads out of {base!r}"
        )
    if not os.path.isdir(real):
        raise RequestError(grpc.StatusCode.NOT_FOUND, f"{what} {path!r} is not a directory")
    return real


def _beneath(base: str, path: str, what: str) -> str:
    """The path of the directory ``path`` below ``base`` (the build
    directory), a strict descendant of it, resolved without following any
    symbolic link: each component is opened with O_NOFOLLOW from its
    parent's descriptor, which with no ``..`` (``_relative``) is what
    openat2's RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS gives.  A link on the way,
    one an earlier action planted in its outputs say, is refused, never
    followed (even to a place inside the build directory: another action's
    directory is there).  The build directory itself is refused: it holds
    every other action's directories, which a Run may neither see whole
    (an input root) nor make writable (a temporary directory)."""
    parts = _relative(path, what)
    if not parts:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{what} {path!r} is the build directory itself, which holds every other action's "
            "files: it must be a directory below it",
        )
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(base, flags)
    try:
        for i, part in enumerate(parts):
            try:
                nxt = os.open(part, flags, dir_fd=fd)
            except OSError as e:
                at = "/".join(parts[: i + 1])
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise RequestError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"{what} {path!r}: {at!r} is not a directory (a symbolic link or a file)",
                    ) from None
                if e.errno == errno.ENOENT:
                    raise RequestError(
                        grpc.StatusCode.NOT_FOUND, f"{what} {path!r}: {at!r} does not exist"
                    ) from None
                raise
            os.close(fd)
            fd = nxt
        found = os.path.join(base, *parts)
        st, now = os.fstat(fd), os.lstat(found)
        if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT, f"{what} {path!r} changed while it was resolved"
            )
        return found
    finally:
        os.close(fd)


def _open_log(build_fd: int, path: str, what: str) -> int:
    """A new file at ``path`` below the build directory, open for writing:
    each directory on the way opened with O_NOFOLLOW, the file created with
    O_EXCL (an existing file or link there is refused), as bb_runner does."""
    parts = _relative(path, what)
    if not parts:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{what} is empty")
    dir_fd = os.dup(build_fd)
    try:
        for part in parts[:-1]:
            next_fd = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
            )
            os.close(dir_fd)
            dir_fd = next_fd
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(parts[-1], flags, 0o666, dir_fd=dir_fd)
    except OSError as e:
        code = _OPEN_CODES.get(e.errno or 0, grpc.StatusCode.INVALID_ARGUMENT)
        raise RequestError(code, f"cannot create {what} {path!r}: {e.strerror}") from None
    finally:
        os.close(dir_fd)


def _empty_directories(root: str, skip: str | None) -> Iterator[str]:
    """The directories below ``root`` with nothing in them, never following a
    symbolic link; ``skip`` (the temporary directory, when it is inside) and
    what is below it are left out."""
    for top, dirs, files in os.walk(root, followlinks=False):
        if skip is not None and top == skip:
            dirs[:] = []
            continue
        if top != root and not dirs and not files:
            yield top


def _posix_usage(result: ExecutionResult) -> any_pb2.Any:
    """Buildbarn's POSIXResourceUsage for ``result``: the figures hermetic
    measured from pid 1's rusage (which reaped every process of the
    sandbox); those it does not carry stay unset."""
    usage = resourceusage_pb2.POSIXResourceUsage()
    u = result.usage
    if u.user_time is not None:
        usage.user_time.FromNanoseconds(round(u.user_time * 1e9))
    if u.system_time is not None:
        usage.system_time.FromNanoseconds(round(u.system_time * 1e9))
    if u.io_read_bytes is not None and u.source("io_read_bytes") == "rusage":
        usage.block_input_operations = u.io_read_bytes // 512
    if u.io_write_bytes is not None and u.source("io_write_bytes") == "rusage":
        usage.block_output_operations = u.io_write_bytes // 512
    if result.signal is not None:
        try:
            usage.termination_signal = signal.Signals(result.signal).name.removeprefix("SIG")
        except ValueError:
            usage.termination_signal = str(result.signal)
    packed = any_pb2.Any()
    packed.Pack(usage)
    return packed


class _Cancelled:
    """A Run's RPC as a cancel flag: set once it ends without an answer
    (bb_worker cancelled it, its deadline passed, or the server stops)."""

    def __init__(self, context: grpc.ServicerContext) -> None:
        self._context = context

    def is_set(self) -> bool:
        return not self._context.is_active()


class RunnerService(runner_pb2_grpc.RunnerServicer):
    """The Runner service over ``build_directory``, each Run under ``base``
    extended with the request's paths and environment."""

    def __init__(
        self, build_directory: str, base: SandboxSpec, *, audit_log: str | None = None
    ) -> None:
        real = os.path.realpath(build_directory)
        if not os.path.isdir(real):
            raise SpecError(
                f"build directory {build_directory!r} is not a directory",
                field="build_directory",
                value=build_directory,
            )
        base.validate()
        self.build_directory = real
        self.base = base
        if audit_log is not None:
            where = os.path.realpath(audit_log)
            if where == real or where.startswith(real + "/") or real.startswith(where + "/"):
                # Every Run may write somewhere in there.
                raise SpecError(
                    f"audit_log {audit_log!r} is in or above the build directory {real!r}, "
                    "which actions write",
                    field="audit_log",
                    value=audit_log,
                )
        self.audit_log = audit_log
        self.not_ready = self._prepare_once()

    def _prepare_once(self) -> str | None:
        """Why no action can run here, or None: the base spec prepared on
        this host (every isolation layer it asks for is available)."""
        created = HermeticExecutor.create(self.base, audit_log=self.audit_log)
        if not created.is_ok():
            error = created.unwrap_err()
            if isinstance(error, SpecError) and error.field == "audit_log":
                raise error  # the runner's own option: said at its start
            return f"the sandbox cannot run here: {error}"
        created.unwrap().close()
        return None

    # -- the protocol --------------------------------------------------

    def CheckReadiness(  # noqa: N802 (the protocol's name)
        self, request: runner_pb2.CheckReadinessRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        try:
            if self.not_ready is not None:
                raise RequestError(grpc.StatusCode.UNAVAILABLE, self.not_ready)
            if request.path:
                parts = _relative(request.path, "path")
                full = os.path.join(self.build_directory, *parts)
                if not os.path.lexists(full):
                    raise RequestError(
                        grpc.StatusCode.UNAVAILABLE,
                        f"{request.path!r} does not exist in the build directory",
                    )
        except RequestError as e:
            _abort(context, e)
        return empty_pb2.Empty()

    def Run(  # noqa: N802 (the protocol's name)
        self, request: runner_pb2.RunRequest, context: grpc.ServicerContext
    ) -> runner_pb2.RunResponse:
        try:
            return self._run(request, context)
        except RequestError as e:
            _abort(context, e)

    # -- one Run -------------------------------------------------------

    def spec_for(self, request: runner_pb2.RunRequest) -> tuple[SandboxSpec, str]:
        """The spec of one Run and its working directory."""
        if not request.arguments:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "no arguments")
        if self.not_ready is not None:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, self.not_ready)
        build = self.build_directory
        root = _beneath(build, request.input_root_directory, "input_root_directory")
        cwd = _directory(root, request.working_directory, "working_directory")
        temps = list(self.base.temps)
        tmp = None
        if request.temporary_directory:
            tmp = _beneath(build, request.temporary_directory, "temporary_directory")
            temps.append(tmp)
        writable = list(_empty_directories(root, tmp))
        inputs = list(self.base.inputs)
        if os.listdir(root):
            inputs.append(root)
        else:
            writable.append(root)  # an empty input root: all of it is the action's
        try:
            environment = EnvSet(vars=tuple(request.environment_variables.items()))
            spec = dataclasses.replace(
                self.base,
                inputs=PathSet(tuple(inputs)),
                outputs=PathSet((*self.base.outputs, *writable)),
                temps=PathSet(tuple(temps)),
                environment=environment,
            )
            spec.validate()
        except SpecError as e:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        return spec, cwd

    def _run(
        self, request: runner_pb2.RunRequest, context: grpc.ServicerContext
    ) -> runner_pb2.RunResponse:
        spec, cwd = self.spec_for(request)
        build_fd = os.open(self.build_directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            out = _open_log(build_fd, request.stdout_path, "stdout_path")
            try:
                err = _open_log(build_fd, request.stderr_path, "stderr_path")
            except BaseException:
                os.close(out)
                raise
        finally:
            os.close(build_fd)
        try:
            created = HermeticExecutor.create(spec, audit_log=self.audit_log)
            if not created.is_ok():
                raise _status_of(created.unwrap_err())
            with created.unwrap() as executor:
                done = executor.execute(
                    list(request.arguments),
                    cwd=cwd,
                    streams=Streams(stdout=out, stderr=err),
                    cancel=_Cancelled(context),
                )
        finally:
            os.close(out)
            os.close(err)
        if not done.is_ok():
            raise _status_of(done.unwrap_err())
        result = done.unwrap()
        exit_code = result.exit_code if result.exit_code is not None else -1
        return runner_pb2.RunResponse(exit_code=exit_code, resource_usage=[_posix_usage(result)])


def _status_of(error: BaseException) -> RequestError:
    """The gRPC status for an action that could not run."""
    if isinstance(error, SpecError):
        return RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    if isinstance(error, UnsupportedError):
        return RequestError(grpc.StatusCode.FAILED_PRECONDITION, str(error))
    if isinstance(error, SandboxError) and error.errno in _BAD_COMMAND:
        return RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    if isinstance(error, HermeticError):
        return RequestError(grpc.StatusCode.INTERNAL, str(error))
    raise error


def _abort(context: grpc.ServicerContext, error: RequestError) -> NoReturn:
    context.abort(error.code, str(error))
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


# -- the server --------------------------------------------------------------


def socket_path(listen: str) -> str:
    """The socket path of ``--listen unix:PATH``, absolute."""
    scheme, sep, path = listen.partition(":")
    if scheme != "unix" or not sep or not path or "\0" in path:
        raise SpecError(f"--listen takes unix:PATH, got {listen!r}", field="listen", value=listen)
    return os.path.abspath(path)


def _clear_stale(path: str) -> None:
    """Remove a socket left by a runner that is gone; refuse anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SpecError(f"{path!r} exists and is not a socket", field="listen", value=path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except OSError:
        pass
    finally:
        probe.close()
    raise SpecError(f"{path!r}: another server is listening there", field="listen", value=path)


def serve(
    listen: str,
    build_directory: str,
    base: SandboxSpec,
    *,
    concurrency: int | None = None,
    audit_log: str | None = None,
) -> int:
    """Serve the Runner protocol on ``listen`` (``unix:PATH``) until SIGTERM
    or SIGINT; running actions are then cancelled and the socket removed.
    The socket is made with mode 0660: bb_worker runs as this user or in its
    group (the directory holding the socket decides who else reaches it).
    ``audit_log``: every Run's violations are appended there (the protocol
    has no field for them)."""
    path = socket_path(listen)
    if concurrency is not None and concurrency < 1:
        raise SpecError(
            f"concurrency must be at least 1, got {concurrency}",
            field="concurrency",
            value=concurrency,
        )
    service = RunnerService(build_directory, base, audit_log=audit_log)
    workers = concurrency or os.cpu_count() or 1
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hermetic-runner"),
        options=[("grpc.so_reuseport", 0)],
    )
    runner_pb2_grpc.add_RunnerServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    _clear_stale(path)
    done = threading.Event()
    # The handlers first: a SIGTERM from here on stops the server cleanly
    # (running actions killed, the socket removed) instead of killing it.
    handled = _on_signals(done) if threading.current_thread() is threading.main_thread() else []
    old_umask = os.umask(0o117)
    try:
        port = server.add_insecure_port(f"unix:{path}")
        server.start()
    except RuntimeError:  # grpc's "failed to bind to address"
        port = 0
    finally:
        os.umask(old_umask)
    if port == 0:
        for signum, previous in handled:
            signal.signal(signum, previous)
        raise SpecError(f"cannot listen on {path!r}", field="listen", value=path)
    try:
        if service.not_ready is not None:
            print(f"hermetic runner: not ready: {service.not_ready}", file=sys.stderr)
        print(f"hermetic runner: listening on unix:{path}", file=sys.stderr, flush=True)
        done.wait()
    finally:
        # stop() cancels the running RPCs at once: their actions see it
        # within one periodic check and are killed with their sandbox.
        server.stop(grace=None).wait()
        for signum, previous in handled:
            signal.signal(signum, previous)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return 0


def _on_signals(done: threading.Event) -> Sequence[tuple[int, Any]]:
    def handler(signum: int, frame: object) -> None:
        done.set()

    return [(s, signal.signal(s, handler)) for s in (signal.SIGTERM, signal.SIGINT)]
