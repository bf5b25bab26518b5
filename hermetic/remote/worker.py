"""``hermetic worker``: a Remote Workers API bot that runs leases hermetically.

Each of ``--concurrency`` bots holds one bot session
(``google.devtools.remoteworkers.v1test2.Bots``) and one lease at a time:
``CreateBotSession``, then ``UpdateBotSession`` calls that long-poll for
work while idle and, while a lease runs, say it is ACTIVE every second
(the answer tells the bot when the server dropped the lease: a cancelled
lease kills its action).  A lease's payload is ``Any(Action)`` or
``Any(Digest)`` of one.  Per lease (:func:`execute_lease`): fetch the
Command and the input root into the local cache, stage them into the exec
root of a sandbox slot (hermetic/remote/sandboxes.py: an executor reused
lease after lease, its exec root emptied between them), run the command
there (the exec root is its only output, the staged inputs are read-only
for this action, the environment is exactly the Command's,
``Action.timeout`` its timeout),
collect and upload the outputs, and complete the lease with
``Any(ActionResult)``.  A timeout completes with DEADLINE_EXCEEDED.

SIGTERM (or SIGINT): each bot says BOT_TERMINATING, so the server assigns
it nothing more, hands a running lease back (its action is killed and the
lease completed with UNAVAILABLE, which the server retries elsewhere at
once), and the worker exits 0.  A server that goes away is reconnected to
with exponential backoff; a session it no longer knows is created anew.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import platform
import signal
import socket
import stat
import threading
import time
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from hermetic import (
    Err,
    HermeticError,
    SandboxError,
    SpecError,
    Streams,
    capabilities,
)
from hermetic.core.tree import remove_tree
from hermetic.remote import execroot
from hermetic.remote.cas import (
    DEFAULT_CACHE_SIZE,
    Cancelled,
    CasClient,
    CasError,
    LocalCache,
    file_blob,
    key,
)
from hermetic.remote.protos import (
    bots_pb2,
    bots_pb2_grpc,
    code_pb2,
    grpc,
    re_pb2,
    status_pb2,
    worker_pb2,
)
from hermetic.remote.sandboxes import Sandboxes, Slot, SlotError

LOG = logging.getLogger("hermetic.remote.worker")

#: stdout and stderr up to this size are also inlined in the ActionResult.
INLINE_OUTPUT = 1 << 10
#: The violations of one lease its result carries, at most (all of them go
#: to --audit-log; the result says how many there were).
MAX_REPORTED_VIOLATIONS = 100
#: The long poll's deadline while idle: the server answers before it with a
#: lease, or when it runs out (BuildGrid holds a poll for 80% of it).
IDLE_POLL = 30.0
#: How often a running lease is reported ACTIVE (and a cancellation seen).
HEARTBEAT = 1.0
#: The timeout of an action without Action.timeout, in seconds: 30 minutes,
#: the default Buildbarn's example deployment gives its scheduler
#: (defaultExecutionTimeout: 1800s).
DEFAULT_TIMEOUT = 1800.0
#: Reconnecting: the first wait, and the longest.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """What ``hermetic worker`` was given."""

    server: str
    instance: str
    work_dir: str
    bot_id: str = ""
    concurrency: int = 1
    platform: tuple[tuple[str, str], ...] = ()
    cache_size: int = DEFAULT_CACHE_SIZE
    audit_log: str | None = None

    def target(self) -> str:
        """The gRPC target of ``--server`` (``grpc://HOST:PORT`` or ``unix:PATH``)."""
        for prefix in ("grpc://", "http://"):
            if self.server.startswith(prefix):
                return self.server[len(prefix) :]
        if self.server.startswith(("https://", "grpcs://")):
            raise ValueError(f"TLS servers are not supported yet: {self.server!r}")
        return self.server


def default_platform() -> tuple[tuple[str, str], ...]:
    """OSFamily and ISA as BuildGrid matches them."""
    isa = {"x86_64": "x86-64", "amd64": "x86-64", "aarch64": "aarch64"}
    machine = platform.machine().lower()
    return (("OSFamily", platform.system().lower()), ("ISA", isa.get(machine, machine)))


# -- one lease ------------------------------------------------------------------


@dataclasses.dataclass
class LeaseOutcome:
    """How a lease ends: the result (when the action ran) and the status."""

    status: Any
    result: Any | None = None


def _now() -> Any:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def _status(code: int, message: str = "") -> Any:
    return status_pb2.Status(code=code, message=message)


def _action_of(lease: Any, cas: CasClient) -> Any:
    payload = lease.payload
    if payload.Is(re_pb2.Action.DESCRIPTOR):
        action = re_pb2.Action()
        payload.Unpack(action)
        return action
    if payload.Is(re_pb2.Digest.DESCRIPTOR):
        digest = re_pb2.Digest()
        payload.Unpack(digest)
        return re_pb2.Action.FromString(cas.read_one(digest))
    raise execroot.ExecRootError(
        f"the lease's payload is neither an Action nor a Digest: {payload.type_url}"
    )


def _add_symlinks(result: Any, command: Any, symlinks: Sequence[Any]) -> None:
    """Put the output symlinks in the ActionResult fields the client reads.

    A v2.1 Command (``output_paths``) gets ``output_symlinks``; a v2.0 one
    (``output_files``, ``output_directories``) gets ``output_file_symlinks``
    and ``output_directory_symlinks``, by the list that named each, as the
    API says: a v2.0 client reads only those (Bazel 4.2.3 reports a
    symlink it finds nowhere else as an output that was not created).
    """
    if command.output_paths:
        result.output_symlinks.extend(symlinks)
        return
    files = set(command.output_files)
    result.output_file_symlinks.extend(s for s in symlinks if s.path in files)
    result.output_directory_symlinks.extend(s for s in symlinks if s.path not in files)


def _remove_tree(path: str) -> None:
    """Remove what an action left, whatever modes and depth it gave its
    directories (iterative, never following a link: hermetic/core/tree.py)."""
    remove_tree(path)


def execute_lease(
    lease: Any,
    *,
    cas: CasClient,
    cache: LocalCache,
    work_dir: str,
    bot_id: str,
    cancel: threading.Event,
    sandboxes: Sandboxes | None = None,
) -> LeaseOutcome:
    """Run one lease to its outcome; never raises for what the action or
    the farm did (that becomes the lease's status).  ``sandboxes``: the
    worker's reused slots (hermetic/remote/sandboxes.py); without them the
    lease gets a slot of its own, made and closed here."""
    meta = re_pb2.ExecutedActionMetadata(worker=bot_id)
    meta.worker_start_timestamp.CopyFrom(_now())
    cpu_start = time.thread_time()
    pool = sandboxes or Sandboxes(work_dir)
    try:
        with pool.slot() as slot:
            return _execute(lease, cas, cache, slot, meta, cancel, cpu_start)
    except SlotError as e:
        return LeaseOutcome(_status(code_pb2.INTERNAL, str(e)))
    except Cancelled as e:
        return LeaseOutcome(_status(code_pb2.CANCELLED, str(e)))
    except execroot.LimitError as e:
        # Not INTERNAL or UNAVAILABLE: the farm would run the action again.
        return LeaseOutcome(_status(code_pb2.RESOURCE_EXHAUSTED, str(e)))
    except (execroot.ExecRootError, HermeticError, ValueError) as e:
        return LeaseOutcome(_status(code_pb2.INVALID_ARGUMENT, str(e)))
    except CasError as e:
        return LeaseOutcome(_status(code_pb2.FAILED_PRECONDITION, str(e)))
    except grpc.RpcError as e:
        code = e.code()
        if code == grpc.StatusCode.NOT_FOUND:
            return LeaseOutcome(_status(code_pb2.FAILED_PRECONDITION, f"a blob is missing: {e}"))
        return LeaseOutcome(_status(code_pb2.UNAVAILABLE, f"the CAS failed: {code}"))
    except OSError as e:
        return LeaseOutcome(_status(code_pb2.INTERNAL, f"the worker failed: {e}"))
    finally:
        if pool is not sandboxes:
            pool.close()


def _execute(
    lease: Any,
    cas: CasClient,
    cache: LocalCache,
    slot: Slot,
    meta: Any,
    cancel: threading.Event,
    cpu_start: float,
) -> LeaseOutcome:
    exec_root = slot.exec_root
    meta.input_fetch_start_timestamp.CopyFrom(_now())
    action = _action_of(lease, cas)
    command = re_pb2.Command.FromString(cas.read_one(action.command_digest))
    if not command.arguments:
        raise execroot.ExecRootError("the command has no arguments")
    tree = execroot.fetch_tree(cas, action.input_root_digest, cache, cancel)
    outputs = execroot.output_locations(command)
    workdir = execroot.relative(command.working_directory, what="working_directory")
    execroot.check_lengths(exec_root, [workdir], what="working directory")
    execroot.check_lengths(exec_root, outputs, what="output")
    execroot.stage(tree, cache, cas, exec_root, outputs, cancel)
    execroot.make_output_parents(exec_root, outputs, workdir, cancel)
    # Every staged hard link shares its inode with the cache: read-only for
    # this action (bind mounts in its own mount namespace).  The exec root
    # is its one writable place; nothing else of the worker (the cache,
    # other slots) is declared in the slot's spec, so nothing else of it
    # exists inside the sandbox.
    read_only = execroot.read_only_paths(tree, outputs, exec_root)
    env = {v.name: v.value for v in command.environment_variables}
    meta.input_fetch_completed_timestamp.CopyFrom(_now())

    timeout = DEFAULT_TIMEOUT
    if action.HasField("timeout"):
        timeout = action.timeout.ToTimedelta().total_seconds() or DEFAULT_TIMEOUT
    out_path = os.path.join(slot.private, "stdout")
    err_path = os.path.join(slot.private, "stderr")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        meta.execution_start_timestamp.CopyFrom(_now())
        ran = slot.executor.execute(
            list(command.arguments),
            cwd=os.path.join(exec_root, workdir) if workdir else exec_root,
            timeout=timeout,
            streams=Streams(stdout=out, stderr=err),
            cancel=cancel,
            env=env,
            read_only=read_only,
        )
        meta.execution_completed_timestamp.CopyFrom(_now())
    if isinstance(ran, Err):
        error = ran.error
        if isinstance(error, SandboxError) and error.stage == "exec":
            # The command itself cannot be executed (not found, not
            # executable): the action's fault, which no retry mends.
            detail = error.detail or error.strerror
            return LeaseOutcome(
                _status(code_pb2.INVALID_ARGUMENT, f"the command cannot be executed: {detail}")
            )
        if isinstance(error, SpecError):
            # The Command's own (an environment variable the sandbox refuses).
            return LeaseOutcome(_status(code_pb2.INVALID_ARGUMENT, str(error)))
        return LeaseOutcome(_status(code_pb2.INTERNAL, f"the action could not run: {error}"))
    res = ran.unwrap()
    if cancel.is_set():
        return LeaseOutcome(_status(code_pb2.CANCELLED, "the lease was cancelled"))

    meta.output_upload_start_timestamp.CopyFrom(_now())
    collected = execroot.collect(command, exec_root)
    result = re_pb2.ActionResult(
        exit_code=res.exit_code if res.exit_code is not None else 128 + (res.signal or 0),
        output_files=collected.files,
        output_directories=collected.directories,
    )
    _add_symlinks(result, command, collected.symlinks)
    for name, path in (("stdout", out_path), ("stderr", err_path)):
        # Hashed in chunks and uploaded from the file: never whole in memory.
        execroot.add_output_bytes(collected, os.stat(path).st_size, name)
        digest, blob = file_blob(path)
        collected.blobs[key(digest)] = blob
        getattr(result, f"{name}_digest").CopyFrom(digest)
        if digest.size_bytes <= INLINE_OUTPUT:
            with open(path, "rb") as f:
                setattr(result, f"{name}_raw", f.read(INLINE_OUTPUT))
    cas.upload(collected.blobs)
    meta.output_upload_completed_timestamp.CopyFrom(_now())
    # hermetic's resource usage of the whole sandbox (wall, CPU, peak memory,
    # I/O, processes; None where unknown), for whoever reads the metadata;
    # every violation the sandbox stopped (up to a bound, and their number);
    # and the CPU the worker's own thread used for the lease (in ms, up to
    # here), which tells its own work from waiting for a CPU.
    usage = struct_pb2.Struct()
    usage.update(
        {
            "hermetic_usage": {
                k: v for k, v in res.usage.to_dict().items() if k != "sources" and v is not None
            },
            "hermetic_violations": [v.to_dict() for v in res.violations[:MAX_REPORTED_VIOLATIONS]],
            "hermetic_violations_total": len(res.violations),
            "hermetic_worker_cpu_ms": round((time.thread_time() - cpu_start) * 1e3, 3),
        }
    )
    meta.auxiliary_metadata.add().Pack(usage)
    meta.worker_completed_timestamp.CopyFrom(_now())
    result.execution_metadata.CopyFrom(meta)
    if res.timed_out:
        return LeaseOutcome(
            _status(code_pb2.DEADLINE_EXCEEDED, f"the action ran past its timeout ({timeout} s)"),
            result,
        )
    return LeaseOutcome(_status(code_pb2.OK), result)


# -- one bot session -------------------------------------------------------------


class _Running:
    """A lease being executed on its own thread."""

    def __init__(self, lease: Any, run: Callable[[Any, threading.Event], LeaseOutcome]) -> None:
        self.lease = lease
        self.cancel = threading.Event()
        self.done = threading.Event()
        self.outcome: LeaseOutcome | None = None
        self.thread = threading.Thread(target=self._main, args=(run,), daemon=True)
        self.thread.start()

    def _main(self, run: Callable[[Any, threading.Event], LeaseOutcome]) -> None:
        try:
            self.outcome = run(self.lease, self.cancel)
        except BaseException as e:  # a bug must still complete the lease
            LOG.exception("lease %s failed", self.lease.id)
            self.outcome = LeaseOutcome(_status(code_pb2.INTERNAL, f"the worker failed: {e!r}"))
        finally:
            self.done.set()

    def report(self) -> Any:
        lease = bots_pb2.Lease()
        lease.CopyFrom(self.lease)
        if self.done.is_set() and self.outcome is not None:
            lease.state = bots_pb2.COMPLETED
            lease.status.CopyFrom(self.outcome.status)
            if self.outcome.result is not None:
                lease.result.Pack(self.outcome.result)
        else:
            lease.state = bots_pb2.ACTIVE
        return lease


class Bot:
    """One bot session holding at most one lease."""

    def __init__(
        self,
        channel: Any,
        instance: str,
        bot_id: str,
        properties: Sequence[tuple[str, str]],
        run: Callable[[Any, threading.Event], LeaseOutcome],
        stop: threading.Event,
    ) -> None:
        self._stub = bots_pb2_grpc.BotsStub(channel)
        self._instance = instance
        self.bot_id = bot_id
        self._properties = tuple(properties)
        self._run = run
        self._stop = stop
        self._session: Any | None = None
        self._running: _Running | None = None
        self.completed = 0

    def _message(self, status: Any) -> Any:
        worker = worker_pb2.Worker(
            devices=[
                worker_pb2.Device(
                    handle=self.bot_id,
                    properties=[
                        worker_pb2.Device.Property(key=k, value=v) for k, v in self._properties
                    ],
                )
            ]
        )
        session = bots_pb2.BotSession(bot_id=self.bot_id, status=status, worker=worker)
        if self._session is not None:
            session.name = self._session.name
            session.version = self._session.version
        if self._running is not None:
            session.leases.append(self._running.report())
        return session

    def _call(self, method: Any, request: Any, timeout: float) -> Any:
        """One RPC whose wait ends early when the worker is stopping."""
        future = method.future(request, timeout=timeout)
        stop_at_done = threading.Event()
        future.add_done_callback(lambda _: stop_at_done.set())
        while not stop_at_done.wait(0.1):
            if self._stop.is_set():
                future.cancel()
                break
            if (
                self._running is not None
                and self._running.done.is_set()
                and request.bot_session.leases
                and request.bot_session.leases[0].state == bots_pb2.ACTIVE
            ):
                # The lease finished during a long poll: say so now.
                future.cancel()
                break
        return future.result()

    def _sync(self, status: Any = bots_pb2.OK) -> None:
        timeout = HEARTBEAT * 10 if self._running is not None else IDLE_POLL
        if self._session is None:
            self._running_cancel_all()
            request = bots_pb2.CreateBotSessionRequest(
                parent=self._instance, bot_session=self._message(status)
            )
            reply = self._call(self._stub.CreateBotSession, request, timeout)
            LOG.info("bot %s: session %s", self.bot_id, reply.name)
        else:
            request = bots_pb2.UpdateBotSessionRequest(
                name=self._session.name, bot_session=self._message(status)
            )
            reply = self._call(self._stub.UpdateBotSession, request, timeout)
        reported = self._running
        self._session = reply
        if reported is not None and reported.done.is_set():
            # Its completion was in the request the server answered.
            self.completed += 1
            self._running = None
        self._take(reply.leases)

    def _running_cancel_all(self) -> None:
        if self._running is not None:
            self._running.cancel.set()
            self._running.thread.join()
            self._running = None

    def _take(self, leases: Sequence[Any]) -> None:
        ids = {lease.id for lease in leases if lease.state != bots_pb2.CANCELLED}
        if self._running is not None and self._running.lease.id not in ids:
            LOG.info("bot %s: lease %s cancelled", self.bot_id, self._running.lease.id)
            self._running_cancel_all()
        for lease in leases:
            if self._running is None and lease.state in (bots_pb2.PENDING, bots_pb2.ACTIVE):
                LOG.info("bot %s: lease %s", self.bot_id, lease.id)
                self._running = _Running(lease, self._run)

    def run(self) -> None:
        """Serve leases until the worker stops, then sign off."""
        backoff = BACKOFF_FIRST
        while not self._stop.is_set():
            try:
                if self._running is not None and not self._running.done.is_set():
                    self._running.done.wait(HEARTBEAT)
                self._sync()
                backoff = BACKOFF_FIRST
            except grpc.FutureCancelledError:
                continue
            except grpc.RpcError as e:
                code = e.code()
                if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                    LOG.info("bot %s: the server forgot the session (%s)", self.bot_id, code)
                    self._session = None
                    continue
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue
                # The session is kept: a server that restarts over the same
                # database still knows it (and the running lease); one that
                # does not says so (above) and a new session is made.
                LOG.warning(
                    "bot %s: the server failed (%s); again in %.1f s", self.bot_id, code, backoff
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            except Exception:
                # Whatever else went wrong, the bot goes on (a dead bot thread
                # would leave a worker that takes no lease and never says so).
                LOG.exception("bot %s: unexpected failure; again in %.1f s", self.bot_id, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
        self._sign_off()

    def _sign_off(self) -> None:
        """BOT_TERMINATING: no more leases; a running one is handed back."""
        running = self._running
        if running is not None and not running.done.is_set():
            running.cancel.set()
            running.thread.join()
            running.outcome = LeaseOutcome(
                _status(code_pb2.UNAVAILABLE, "the worker is shutting down")
            )
            # Said in the log: the action ran here in part and will run again
            # elsewhere (the server retries UNAVAILABLE).
            LOG.info("bot %s: lease %s handed back", self.bot_id, running.lease.id)
        if self._session is None:
            return
        request = bots_pb2.UpdateBotSessionRequest(
            name=self._session.name, bot_session=self._message(bots_pb2.BOT_TERMINATING)
        )
        try:
            self._stub.UpdateBotSession(request, timeout=10)
        except grpc.RpcError as e:
            LOG.warning("bot %s: could not sign off (%s)", self.bot_id, e.code())
        self._running = None
        LOG.info("bot %s: signed off", self.bot_id)


# -- the worker -----------------------------------------------------------------


#: The file that marks a directory as a worker's own.
MARKER = ".hermetic-worker"


def _only_ours(path: str) -> None:
    """Refuse ``path`` and every directory above it unless each is root's
    or this user's, and none but a sticky one (/tmp) is writable by others:
    whoever could rename an entry on the way could put their own directory
    (or a link to one) where the worker writes as its user."""
    me = os.geteuid()
    at = path
    while True:
        st = os.stat(at)
        if st.st_uid not in (0, me):
            raise ValueError(
                f"--work-dir {path}: {at} is owned by uid {st.st_uid}, "
                f"neither root nor this user ({me})"
            )
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise ValueError(
                f"--work-dir {path}: {at} is writable by others "
                f"(mode {stat.S_IMODE(st.st_mode):o}) and not sticky"
            )
        if at == "/":
            return
        at = os.path.dirname(at)


def prepare_work_dir(work_dir: str) -> str:
    """The work directory: the cache, exec roots and per-lease files, only
    the worker's (0700).  A directory that is neither new, empty, nor marked
    as a worker's is refused: the worker removes what it finds in it.  So
    is one another user owns or could replace (see _only_ours)."""
    work_dir = os.path.abspath(work_dir)
    parent = os.path.dirname(work_dir)
    os.makedirs(parent, mode=0o755, exist_ok=True)
    parent = os.path.realpath(parent)
    _only_ours(parent)
    work_dir = os.path.join(parent, os.path.basename(work_dir))
    with contextlib.suppress(FileExistsError):
        os.mkdir(work_dir, 0o700)
    st = os.lstat(work_dir)
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"--work-dir {work_dir} is not a directory (a link is refused)")
    if st.st_uid != os.geteuid():
        raise ValueError(
            f"--work-dir {work_dir} is owned by uid {st.st_uid}, not by this user "
            f"({os.geteuid()}): give a new directory or one of this user's"
        )
    entries = os.listdir(work_dir)
    if entries and MARKER not in entries:
        raise ValueError(
            f"--work-dir {work_dir} holds files and is not a hermetic worker's directory "
            f"(no {MARKER}): give a new or empty directory"
        )
    marker = os.open(
        os.path.join(work_dir, MARKER),
        os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
    )
    os.close(marker)
    os.chmod(work_dir, 0o700)
    for sub in ("exec", "leases"):
        path = os.path.join(work_dir, sub)
        # Exec roots of a worker that was killed: nothing in them is needed.
        _remove_tree(path)
        os.mkdir(path, 0o700)
    return work_dir


def serve(
    config: WorkerConfig,
    *,
    stop: threading.Event | None = None,
    handle_signals: bool = True,
) -> int:
    """Run ``config.concurrency`` bots until SIGTERM/SIGINT (or ``stop``); 0."""
    caps = capabilities()
    if not caps.user_namespaces:
        # Landlock alone cannot take back the write it grants on the exec
        # root: every lease with inputs would fail.  Refused at the start
        # rather than lease by lease, with a status the farm would retry.
        why = dict(caps.notes).get("user_namespaces", "user namespaces are unavailable")
        raise ValueError(
            "hermetic worker needs mount namespaces to keep each lease's staged inputs "
            f"read-only, and here {why}"
        )
    stop = stop or threading.Event()
    work_dir = prepare_work_dir(config.work_dir)
    cache = LocalCache(os.path.join(work_dir, "cas"), config.cache_size)
    sandboxes = Sandboxes(work_dir, audit_log=config.audit_log)
    try:
        sandboxes.warm()  # a sandbox that cannot be prepared is said now
    except SlotError as e:
        cache.close()
        raise ValueError(str(e)) from None
    channel = grpc.insecure_channel(
        config.target(),
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ],
    )
    cas = CasClient(channel, config.instance)
    base = config.bot_id or f"{socket.gethostname()}-{os.getpid()}"
    properties = config.platform or default_platform()
    previous: dict[signal.Signals, Any] = {}
    if handle_signals:

        def on_signal(signum: int, frame: types.FrameType | None) -> None:
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    bots = []
    for i in range(config.concurrency):
        bot_id = base if config.concurrency == 1 else f"{base}-{i}"

        def run(lease: Any, cancel: threading.Event, bot_id: str = bot_id) -> LeaseOutcome:
            return execute_lease(
                lease,
                cas=cas,
                cache=cache,
                work_dir=work_dir,
                bot_id=bot_id,
                cancel=cancel,
                sandboxes=sandboxes,
            )

        bots.append(Bot(channel, config.instance, bot_id, properties, run, stop))
    threads = [threading.Thread(target=b.run, name=b.bot_id) for b in bots]
    LOG.info(
        "hermetic worker: %d bot(s) for instance %r at %s",
        len(bots),
        config.instance,
        config.target(),
    )
    try:
        for t in threads:
            t.start()
        # The main thread waits on the event, so a signal handler runs at once.
        while not stop.wait(1.0):
            pass
        for t in threads:
            t.join()
    finally:
        stop.set()
        for t in threads:
            if t.is_alive():
                t.join()
        channel.close()
        sandboxes.close()
        cache.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def parse_platform(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``KEY=VALUE`` pairs, added to (or replacing) OSFamily and ISA."""
    props: dict[str, str] = dict(default_platform())
    extra: list[tuple[str, str]] = []
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ValueError(f"--platform wants KEY=VALUE, got {item!r}")
        if k in props:
            props[k] = v
        else:
            extra.append((k, v))
    return (*props.items(), *extra)


def main(ns: Any) -> int:
    """``hermetic worker``: the command line's entry (hermetic/cli/remote.py)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = WorkerConfig(
        server=ns.server,
        instance=ns.instance,
        work_dir=ns.work_dir or default_work_dir(),
        bot_id=ns.bot_id or "",
        concurrency=ns.concurrency,
        platform=parse_platform(ns.platform or ()),
        cache_size=_cache_size(getattr(ns, "cache_size", None)),
        audit_log=getattr(ns, "audit_log", None),
    )
    if config.concurrency < 1:
        raise ValueError(f"--concurrency must be at least 1, got {config.concurrency}")
    if config.cache_size < 0:
        raise ValueError(f"--cache-size must be at least 0, got {config.cache_size}")
    return serve(config)


def _cache_size(given: int | None) -> int:
    return DEFAULT_CACHE_SIZE if given is None else given


def default_work_dir(environ: Mapping[str, str] = os.environ) -> str:
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hermetic", "worker")


__all__ = [
    "Bot",
    "LeaseOutcome",
    "WorkerConfig",
    "default_platform",
    "execute_lease",
    "main",
    "parse_platform",
    "prepare_work_dir",
    "serve",
]
