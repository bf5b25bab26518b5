"""``hermetic serve``: the per-user daemon behind ``hermetic-launch``.

It keeps a warm executor per spec (by the spec file's content, so an edited
spec is a new one), and runs each launcher's action under it with the
launcher's own stdin, stdout and stderr, in the launcher's working
directory.  What the executor reuses between actions (the probe, the
cgroup slots, the standby sandbox, the mount template) it reuses across
launchers too; that is the whole point: a launcher costs a connection, not
an interpreter.

A fixed set of threads serves: one at a time leads, accepting
connections, checking each peer and taking it through its handshake (the
proof, then the header), and the leader that receives a whole request runs
it (waiting in the C core with the GIL released) while another leads; the
sandbox's periodic check ends an action whose launcher went away (Ctrl-C,
make's SIGTERM).
The daemon exits after ``idle`` seconds without a connection, on
``hermetic serve --stop``, or on SIGTERM/SIGINT, letting running actions
finish.

docs/launch-protocol.md is the contract with the launcher.
"""

from __future__ import annotations

import array
import atexit
import collections
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import resource
import select
import signal
import socket
import stat
import sys
import threading
import time
import traceback
from typing import Any

from hermetic.core.bounded import chunks, open_regular
from hermetic.core.errors import HermeticError, SpecError, UnsupportedError
from hermetic.core.spec import SandboxSpec
from hermetic.core.streams import Streams
from hermetic.executor import HermeticExecutor
from hermetic.exits import EXIT_SETUP, EXIT_SPEC, EXIT_TIMEOUT, failure_status
from hermetic.serve import protocol
from hermetic.serve.peer import (
    Challenge,
    Challenges,
    allow_proofs,
    check_proc,
    check_uid,
    peer_creds,
    prove,
)

#: Seconds without a connection after which the daemon exits (as sccache's
#: server does after 600 s); HERMETIC_SERVE_IDLE or --idle-timeout change it.
DEFAULT_IDLE = 600.0
#: Executors kept warm, one per spec; the least recently used idle one goes.
MAX_EXECUTORS = 8
#: Actions run at once; more requests at once wait their turn.  make -j
#: and ninja run about one action per core.
SERVING_THREADS = max(16, 4 * (os.cpu_count() or 1))
#: Connections at most in their handshake at once, and from one process
#: (a launcher makes one); beyond either, the new connection is refused at
#: once.  Refusing the newest, not closing the oldest: a process that
#: connects in a loop and never proves itself would otherwise push every
#: launcher out before its proof arrives.  Each costs a descriptor until
#: its HANDSHAKE_TIMEOUT.
MAX_HANDSHAKES = 256
MAX_HANDSHAKES_PER_PEER = 4
#: Connections accepted in one round of the handshake loop, before the
#: connections already in their handshake are read again.
ACCEPTS_PER_ROUND = 32
#: Proven requests waiting for a thread at most (each holds its connection
#: and the caller's three streams), and at most an eighth of the
#: descriptors the daemon may open.  While that many wait, no connection is
#: accepted: launchers wait in the listen backlog (and in connect() once it
#: is full), as for any busy server, instead of the daemon running out of
#: descriptors or memory.  The same pause follows an accept() that fails
#: for want of descriptors or memory, which would otherwise return at once
#: again and again.
MAX_QUEUED = 1024
#: Seconds between two looks at whether accepting can resume.
PAUSE = 0.01
#: A spec file larger than this is refused (a spec is a few kilobytes).
MAX_SPEC_BYTES = 16 << 20
#: Spec files whose digest is remembered by their identity (``_known_digest``).
MAX_SPEC_DIGESTS = 64
#: How much older than its read a spec file's ctime must be for its digest
#: to be remembered: far more than a file system clock's tick.
SPEC_SETTLED_NS = 2_000_000_000
#: How often the accept loop looks at the idle time and at a stop request.
_TICK = 0.25


class _Hangup:
    """Set once the launcher's end of ``conn`` closes (Ctrl-C, make's
    SIGTERM) or sends anything more (the protocol has nothing more to
    send): the executor asks ``is_set()`` at each periodic check while
    the action runs (20 to 100 ms apart, docs/limits.md), and then ends
    the sandbox.  One non-blocking peek per ask, no thread of its own."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._set = False

    def is_set(self) -> bool:
        if not self._set:
            try:
                self._conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                self._set = True  # end of stream, or bytes nobody sends
            except BlockingIOError:
                pass
            except OSError:
                self._set = True
        return self._set


class Daemon:
    """The daemon's state; ``run()`` serves until idle or stopped."""

    def __init__(self, directory: str, idle: float = DEFAULT_IDLE) -> None:
        self.directory = directory
        self.socket_path = os.path.join(directory, "serve.sock")
        self.lock_path = os.path.join(directory, "serve.lock")
        self.idle = idle
        self.started = time.time()
        self.served = 0
        self.running = 0
        self.last_activity = time.monotonic()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        #: Requests received while every other thread ran an action, and
        #: the threads waiting for the lead (``_next``); under ``_lock``.
        self._queued: collections.deque[_Pending] = collections.deque()
        self._max_queued = MAX_QUEUED
        self._followers = 0
        #: The leader's state while the daemon serves (tests look at it).
        self._handshakes: _Handshakes | None = None
        #: spec digest -> [executor, actions using it, spec path last seen]
        self._executors: collections.OrderedDict[str, list[Any]] = collections.OrderedDict()
        #: spec path -> (the file's identity when read, its content's digest)
        self._digests: collections.OrderedDict[str, tuple[tuple[int, ...], str]] = (
            collections.OrderedDict()
        )

    # -- the loop ---------------------------------------------------------

    def run(self, ready_fd: int = -1) -> int:
        """Serve until idle or stopped; 0.  ``ready_fd`` gets one byte once
        the socket listens (b"1"), or when another daemon holds the lock
        (b"0": it serves, and this one exits)."""
        self._max_queued = max(1, min(MAX_QUEUED, _open_files() // 8))
        lock_fd = os.open(
            self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                _ready(ready_fd, b"0")
                return 0
            allow_proofs()
            os.ftruncate(lock_fd, 0)
            os.write(lock_fd, f"{os.getpid()}\n".encode())
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)  # a dead daemon's: the lock says so
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                listener.bind(self.socket_path)
                os.chmod(self.socket_path, 0o600)
                listener.listen(128)
                _ready(ready_fd, b"1")
                self._accept(listener)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.socket_path)
                listener.close()
        finally:
            os.close(lock_fd)  # releases the lock, after the socket is gone
        return 0

    def _accept(self, listener: socket.socket) -> None:
        """Serve the listener with SERVING_THREADS threads (``_work``) until
        idle or stopped, then let running actions finish."""
        listener.setblocking(False)
        hs = self._handshakes = _Handshakes(listener)
        try:
            threads = [
                threading.Thread(
                    target=self._work, args=(hs,), name=f"hermetic-serve-{i}", daemon=True
                )
                for i in range(SERVING_THREADS + 1)  # one leads while the others run
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if not hs.ended:  # every thread failed (a bug, logged by threading)
                hs.end()
        finally:
            hs.epoll.close()
        self._close_executors()

    def _work(self, hs: _Handshakes) -> None:
        """One serving thread: it runs the requests it receives while it
        leads (``_next``), until the daemon ends."""
        while True:
            waiting = self._next(hs)
            if waiting is None:
                return
            self._handle(waiting)

    def _next(self, hs: _Handshakes) -> _Pending | None:
        """The next request this thread runs, None once the daemon ends.

        One thread at a time leads: it accepts, checks each peer and takes
        it through its handshake (``_receive``); the others wait for the
        lead or run actions.  The leader that receives a whole, proven
        request hands the lead to a waiting thread and runs the request
        itself: no second thread to wake before the action starts (that
        hand-over took about 0.07 ms on the 2-core test machine).  When
        every other thread runs an action, it queues the request for the
        first to finish and goes on leading, so connections are always
        accepted and answered.  Connections still in their handshake wait
        in the leader's one epoll, each for at most HANDSHAKE_TIMEOUT
        seconds, never in a thread of their own: idle or slow peers,
        however many, never hold a thread that a good launcher needs."""
        with self._lock:
            if self._queued:
                return self._queued.popleft()
            self._followers += 1
        with hs.lead:
            with self._lock:
                self._followers -= 1
            while not hs.ended:
                waiting = self._receive(hs)
                if waiting is None:
                    hs.end()
                    break
                with self._lock:
                    if self._followers:
                        return waiting  # the lead passes as this thread lets it go
                    self._queued.append(waiting)
        return None

    def _receive(self, hs: _Handshakes) -> _Pending | None:
        """The leader's loop: the next whole, proven request, or None when
        the daemon is to end (idle, or stopping).  Only the leader calls
        it, so ``hs`` is never touched by two threads at once.

        A connection in its handshake is watched with EPOLLONESHOT: its
        event disarms it, so a request whose header has come needs no
        system call to stop watching it (the connection's close removes
        it).  Events not yet handled when a request is returned wait in
        ``hs.events`` for the next leader: disarmed, they would not come
        again."""
        pending, listener_fd = hs.pending, hs.listener.fileno()
        while not self.stopping.is_set():
            with self._lock:
                room = len(self._queued) < self._max_queued
            accept = room and time.monotonic() >= hs.paused_until
            if accept != hs.accepting:
                # Level-triggered: a listener left watched while nothing
                # is taken from it would wake this loop at once, forever.
                hs.epoll.modify(listener_fd, select.EPOLLIN if accept else 0)
                hs.accepting = accept
            if not hs.events:
                wait = _TICK if accept else PAUSE
                if pending:
                    first = next(iter(pending.values()))
                    wait = min(wait, max(0.0, first.deadline - time.monotonic()))
                hs.events.extend(hs.epoll.poll(wait))
            while hs.events:
                fd, _ = hs.events.popleft()
                if fd == listener_fd:
                    arrived = self._greet_all(hs)
                    if arrived is not None:
                        return arrived  # the listener is watched level-triggered
                    continue
                waiting = pending.get(fd)
                if waiting is None:
                    continue  # closed meanwhile
                done = _receive_head(waiting)
                if done is None:  # more of the header to come
                    hs.epoll.modify(fd, _ONE_READ)
                    continue
                del pending[fd]
                if not done:
                    waiting.close()
                    continue
                with self._lock:
                    self.running += 1
                    self.last_activity = time.monotonic()
                return waiting
            now = time.monotonic()
            for fd, waiting in list(pending.items()):
                if waiting.deadline > now:
                    break
                del pending[fd]
                waiting.close()  # no request in time
            with self._lock:
                quiet = self.running == 0 and not pending
                idle_for = now - self.last_activity
            if quiet and idle_for >= self.idle:
                return None
        return None

    def _greet_all(self, hs: _Handshakes) -> _Pending | None:
        """Accepts what is waiting, at most ACCEPTS_PER_ROUND at a time (so
        that a process connecting in a loop cannot keep the other
        handshakes from being read), and takes each through the start of
        its handshake (``_greet``).  The connections stay blocking: the
        handshake's reads and writes ask not to wait (MSG_DONTWAIT).

        A launcher answers its challenge while the daemon compares it from
        /proc, so its request has usually come by the time the comparison
        passes: it is read then, and returned (counted as running) with no
        round of the leader's loop, the connections still waiting being
        accepted by the next round.  Else the connection is watched."""
        for _ in range(ACCEPTS_PER_ROUND):
            try:
                conn, _ = hs.listener.accept()
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    hs.paused_until = time.monotonic() + PAUSE
                return None  # shut down, or out of resources: a later round retries
            try:
                waiting = self._greet(hs, conn)
            except _Refused as refused:
                # Before anything is read: the caller's streams have not come,
                # so the reason goes on the connection, after the status.
                with contextlib.suppress(OSError):
                    conn.send(refused.word + refused.line, socket.MSG_DONTWAIT)
                conn.close()
                continue
            except OSError:
                conn.close()
                continue
            done = _receive_head(waiting)
            if done is False:
                waiting.close()
                continue
            if done:
                with self._lock:
                    self.running += 1
                    self.last_activity = time.monotonic()
                return waiting
            try:
                hs.epoll.register(conn.fileno(), _ONE_READ)
            except OSError:  # out of memory or of the user's epoll watches
                waiting.close()
                continue
            hs.pending[conn.fileno()] = waiting
            with self._lock:
                self.last_activity = time.monotonic()
        return None

    @staticmethod
    def _greet(hs: _Handshakes, conn: socket.socket) -> _Pending:
        """The start of a connection's handshake, before anything is read
        from it: its uid (SO_PEERCRED) and its count of handshakes are
        checked, it gets its challenge, and then, while the caller writes
        the challenge into our memory and sends its request, the rest of
        the peer is compared from /proc.  A peer of another uid, or one
        past the bounds, gets no challenge.  Raises _Refused to refuse it
        (the challenge then ends with the connection), OSError when the
        connection fails."""
        pid, uid = peer_creds(conn)
        try:
            check_uid(uid)
        except UnsupportedError as e:
            raise _Refused(protocol.reply(EXIT_SETUP), e.reason) from None
        # Counted before the peer's /proc is read: a refusal here costs the
        # daemon next to nothing.
        held = sum(1 for waiting in hs.pending.values() if waiting.pid == pid)
        challenge = None
        if held < MAX_HANDSHAKES_PER_PEER and len(hs.pending) < MAX_HANDSHAKES:
            challenge = hs.challenges.take()
        if challenge is None:
            raise _Refused(
                protocol.reply(EXIT_SETUP),
                f"too many connections in their handshake ({len(hs.pending)}; "
                f"{held} from pid {pid}): try again",
            )
        waiting = _Pending(conn, challenge, time.monotonic() + protocol.HANDSHAKE_TIMEOUT, pid)
        try:
            # A few bytes into an empty buffer.
            conn.send(challenge.message(), socket.MSG_DONTWAIT)
            # The caller's round trip overlaps this comparison; nothing is
            # read from the connection before it passes.
            check_proc(conn, pid)
        except UnsupportedError as e:
            challenge.end()
            raise _Refused(protocol.refusal(EXIT_SETUP), e.reason) from None
        except BaseException:
            challenge.end()
            raise
        return waiting

    # -- one connection ---------------------------------------------------

    def _handle(self, waiting: _Pending) -> None:
        conn = waiting.conn
        fds = waiting.fds
        exchange = _Exchange(conn)
        try:
            with conn:
                try:
                    self._serve(exchange, fds, waiting.head)
                except Exception as e:  # a bug: logged, never the daemon's end
                    self._fail(exchange, fds, e)
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            with self._lock:
                self.running -= 1
                self.served += 1
                self.last_activity = time.monotonic()

    def _serve(self, exchange: _Exchange, fds: list[int], head: bytes) -> None:
        """One request from a proven caller, its header read.  An error of
        the connection's that means the launcher went away (end of stream,
        EPIPE, ECONNRESET) ends it quietly: nobody is left to answer.  Any
        other error, of the connection's or not, is the daemon's own:
        logged, and answered with a status of hermetic's (``_fail``) while
        the connection still carries one."""
        conn = exchange.conn
        try:
            magic, length = protocol.parse_header(head[: protocol.HEADER.size])
        except (SpecError, ValueError):
            return
        if magic == protocol.STATUS:
            exchange.answer(protocol.reply(0) + json.dumps(self.status()).encode())
            return
        if magic == protocol.STOP:
            self.stopping.set()
            exchange.answer(protocol.reply(0))
            return
        try:
            payload = head[protocol.HEADER.size :]
            if len(payload) > length:
                # Parsed as declared or not at all: bytes past the length
                # would become part of the request.
                raise SpecError(
                    f"the request has {len(payload) - length} bytes past its declared length",
                    field="request",
                )
            payload += _recv_exactly(conn, length - len(payload))
            if len(fds) != 3:
                raise SpecError(f"the request carries {len(fds)} descriptors, not 3")
            request = protocol.parse_run(payload)
            status = self._run(conn, request, fds)
        except HermeticError as e:
            self._refuse(exchange, fds, e)
            return
        except (OSError, EOFError) as e:
            if _gone(e) and not exchange.usable():
                return  # the launcher went away
            raise
        exchange.answer(protocol.reply(status))

    def _fail(self, exchange: _Exchange, fds: list[int], error: BaseException) -> None:
        """An error of the daemon's own while serving: into the daemon's
        log with its traceback, and to the launcher, when it can still be
        answered, as a setup failure (125) with one line on its stderr, so
        that it does not take the daemon for dead."""
        print(
            f"hermetic serve: unexpected error serving a launcher: {error!r}",
            file=sys.stderr,
        )
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        if exchange.answered or not exchange.usable():
            return
        what = error.strerror if isinstance(error, OSError) and error.strerror else repr(error)
        log = os.path.join(self.directory, "serve.log")
        self._say(fds, f"the daemon could not run the action: {what} (see {log})")
        exchange.answer(protocol.reply(EXIT_SETUP))

    @staticmethod
    def _say(fds: list[int], message: str) -> None:
        """One line on the launcher's stderr, when it sent one, never
        waiting for it (_write_now)."""
        if len(fds) == 3:
            line = " ".join(f"hermetic: {message}".split())[:4000] + "\n"
            with contextlib.suppress(OSError):
                _write_now(fds[2], line.encode("utf-8", "backslashreplace"))

    def _refuse(self, exchange: _Exchange, fds: list[int], error: HermeticError) -> None:
        """Say why on the launcher's stderr, and send hermetic's status."""
        status, message = failure_status(error)
        if isinstance(error, SpecError) and error.field in ("request", "runtime_dir"):
            status, message = EXIT_SPEC, str(error)
        elif isinstance(error, UnsupportedError) and error.limits:
            # Short, and in the spec file's terms: a launcher has no flags.
            message = (
                f"cannot enforce {', '.join(error.limits)} here ({error.cause}); set "
                '"best_effort": true in the spec\'s resources to run weakened, or see '
                "'hermetic doctor'"
            )
        self._say(fds, message)
        exchange.answer(protocol.reply(status))

    def _run(self, conn: socket.socket, request: protocol.Request, fds: list[int]) -> int:
        key, executor = self._take(request.spec_path)
        try:
            result = executor.execute(
                list(request.argv),
                cwd=request.cwd,
                env=request.env or None,
                streams=Streams(fds[0], fds[1], fds[2]),
                cancel=_Hangup(conn),
            ).unwrap()
        finally:
            self._give(key)
        if result.timed_out:
            return EXIT_TIMEOUT
        return result.shell_status()

    # -- executors --------------------------------------------------------

    def _take(self, spec_path: str) -> tuple[str, HermeticExecutor]:
        """The warm executor for the spec file's content, made if needed."""
        key = self._known_digest(spec_path)
        if key is not None:
            found = self._lease(key, spec_path)
            if found is not None:
                return key, found
        data, key = self._read_spec(spec_path)
        found = self._lease(key, spec_path)
        if found is not None:
            return key, found
        try:
            spec = SandboxSpec.from_json(data)
        except SpecError as e:
            raise SpecError(f"spec file {spec_path!r}: {e}", field=e.field, value=e.value) from None
        made: HermeticExecutor | None = HermeticExecutor.create(spec).unwrap()
        evicted: list[HermeticExecutor] = []
        with self._lock:
            entry = self._executors.get(key)
            if entry is None:
                entry = self._executors[key] = [made, 0, spec_path]
                made = None
            entry[1] += 1
            self._executors.move_to_end(key)
            for old in list(self._executors):
                if len(self._executors) <= MAX_EXECUTORS:
                    break
                if self._executors[old][1] == 0:
                    evicted.append(self._executors.pop(old)[0])
        if made is not None:  # another thread made it first
            evicted.append(made)
        for ex in evicted:
            ex.close()
        return key, entry[0]

    def _lease(self, key: str, spec_path: str) -> HermeticExecutor | None:
        """The warm executor for this digest, now counted as in use; None
        when there is none."""
        with self._lock:
            entry = self._executors.get(key)
            if entry is None:
                return None
            entry[1] += 1
            entry[2] = spec_path
            self._executors.move_to_end(key)
            executor: HermeticExecutor = entry[0]
            return executor

    def _known_digest(self, spec_path: str) -> str | None:
        """The digest of the spec file's content when the file is the one
        read before, unchanged since: the same inode, size, mtime and ctime
        (which every write and chmod sets to now, and which no one can set
        back).  One stat instead of an open, three reads and a hash on
        every request.  None: read it."""
        try:
            st = os.stat(spec_path)
        except (OSError, ValueError):
            return None  # reading it says why
        with self._lock:
            known = self._digests.get(spec_path)
        if known is None or known[0] != _file_identity(st) or not stat.S_ISREG(st.st_mode):
            return None
        return known[1]

    def _read_spec(self, spec_path: str) -> tuple[bytes, str]:
        """The spec file's content and its digest, remembered for
        ``_known_digest`` once the file is settled: its ctime at least
        SPEC_SETTLED_NS older than the read.  A file changed in the same
        tick of the file system's clock as it was read could otherwise
        keep its ctime (the racy-file problem git's index has): a change
        after the read of a settled file always gives a later ctime."""
        fd = open_regular(spec_path, "spec file", MAX_SPEC_BYTES)
        try:
            data = b"".join(chunks(fd, spec_path, "spec file", MAX_SPEC_BYTES))
            st = os.fstat(fd)  # after the read: a change during it shows
        finally:
            os.close(fd)
        digest = hashlib.sha256(data).hexdigest()
        if st.st_ctime_ns < time.time_ns() - SPEC_SETTLED_NS:
            with self._lock:
                self._digests[spec_path] = (_file_identity(st), digest)
                self._digests.move_to_end(spec_path)
                while len(self._digests) > MAX_SPEC_DIGESTS:
                    self._digests.popitem(last=False)
        return data, digest

    def _give(self, key: str) -> None:
        with self._lock:
            entry = self._executors.get(key)
            if entry is not None:
                entry[1] -= 1

    def _close_executors(self) -> None:
        with self._lock:
            entries = list(self._executors.values())
            self._executors.clear()
        for executor, _, _ in entries:
            executor.close()

    def status(self) -> dict[str, Any]:
        from hermetic import __version__

        with self._lock:
            specs = [
                {"digest": k, "path": v[2], "running": v[1]} for k, v in self._executors.items()
            ]
            running, served = self.running - 1, self.served  # less the asking connection
        return {
            "pid": os.getpid(),
            "version": __version__,
            "socket": self.socket_path,
            "started": self.started,
            "uptime": time.time() - self.started,
            "idle_timeout": self.idle,
            "running": running,
            "served": served,
            "specs": specs,
        }


#: Errors of a connection that say its other end is gone.
_GONE_ERRNOS = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN})


def _gone(error: BaseException) -> bool:
    """Whether ``error``, met on the launcher's connection, says that the
    launcher went away (and nobody is left to answer)."""
    return isinstance(error, EOFError) or (
        isinstance(error, OSError) and error.errno in _GONE_ERRNOS
    )


class _Refused(Exception):
    """A connection refused in its handshake: the word to send (REPLY
    before the challenge, REFUSED after it) and the line saying why."""

    def __init__(self, word: bytes, why: str) -> None:
        super().__init__(why)
        self.word = word
        self.line = f"{why}\n".encode()[:4000]


#: Room for the three descriptors of a request's first bytes, as
#: socket.recv_fds asks for them; more are cut (MSG_CTRUNC), and refused.
_FDS_SPACE = socket.CMSG_LEN(3 * array.array("i").itemsize)
#: How a connection in its handshake is watched (``Daemon._receive``).
_ONE_READ = select.EPOLLIN | select.EPOLLONESHOT


class _Handshakes:
    """What the leading thread works on (``Daemon._next``): the listener,
    one epoll for it and the connections in their handshake (by
    descriptor, oldest first), events read but not yet handled, and the
    challenges' buffers.  ``lead`` is held by the one thread that leads."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.epoll = select.epoll()
        self.epoll.register(listener.fileno(), select.EPOLLIN)
        self.pending: dict[int, _Pending] = {}
        self.events: collections.deque[tuple[int, int]] = collections.deque()
        # One buffer more than the handshakes at once: a buffer freed by a
        # connection that ended is reused as late as possible.
        self.challenges = Challenges(2 * MAX_HANDSHAKES)
        self.lead = threading.Lock()
        self.ended = False
        #: Whether the listener is watched (see MAX_QUEUED), and until when
        #: accepting waits after it failed for want of resources.
        self.accepting = True
        self.paused_until = 0.0

    def end(self) -> None:
        """No new connection from here on (running actions finish); those
        still in their handshake are closed."""
        self.ended = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        for waiting in self.pending.values():
            waiting.close()
        self.pending.clear()
        self.events.clear()


@dataclasses.dataclass
class _Pending:
    """A connection in its handshake: its challenge, until when it may take
    to send its request's header, and what has arrived of it."""

    conn: socket.socket
    challenge: Challenge
    deadline: float
    pid: int = 0  # the peer's, from SO_PEERCRED
    head: bytes = b""
    fds: list[int] = dataclasses.field(default_factory=list)

    def close(self) -> None:
        self.challenge.end()
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()
        self.conn.close()


class _Exchange:
    """A launcher's connection and whether it was answered (at most once:
    the launcher reads one 8-byte reply)."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.answered = False

    def usable(self) -> bool:
        """Whether the launcher's end is still there: no end of stream and
        no error pending (a peek, which consumes nothing)."""
        try:
            self.conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False  # end of stream, or bytes the protocol never sends

    def answer(self, data: bytes) -> None:
        """Send the reply; a launcher gone meanwhile is not an error."""
        if self.answered:
            return
        self.answered = True
        with contextlib.suppress(OSError):
            self.conn.sendall(data)


def _file_identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _ready(fd: int, word: bytes) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.write(fd, word)
        os.close(fd)


def _receive_head(waiting: _Pending) -> bool | None:
    """What has arrived of a connection's header, with the descriptors
    that ride it, without waiting (the leader reads every connection):
    None while it is incomplete; False when the connection is to be
    dropped (closed, too many descriptors, or a header sent before
    the caller wrote the challenge into our memory: the proof is checked
    before the request is even parsed); True when it is whole and proven."""
    while len(waiting.head) < protocol.HEADER.size:
        try:
            # recvmsg itself: socket.recv_fds drops its flags before Python
            # 3.12, and this socket is blocking (a wait here would hold the
            # leader, and every other handshake, for this peer).
            chunk, ancillary, flags, _ = waiting.conn.recvmsg(
                65536, _FDS_SPACE, socket.MSG_DONTWAIT
            )
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return False
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(data[: len(data) - len(data) % got.itemsize])
                waiting.fds.extend(got)
        if flags & getattr(socket, "MSG_CTRUNC", 0x8) or not chunk:
            return False
        waiting.head += chunk
    proven = waiting.challenge.proven()
    waiting.challenge.end()
    if not proven:
        # Said on the connection, not on the caller's stderr: a write to a
        # pipe it chose could block this thread.
        with contextlib.suppress(OSError):
            waiting.conn.send(
                protocol.refusal(EXIT_SETUP)
                + b"the caller did not prove that it may use the daemon (the challenge "
                b"was not written into the daemon's memory)\n",
                socket.MSG_DONTWAIT,
            )
        return False
    return True


def _write_now(fd: int, data: bytes) -> None:
    """Write ``data`` (at most PIPE_BUF bytes) to a caller's descriptor
    without waiting: a caller whose stderr is a pipe it filled, or holds
    the reading end of itself, must not hold a daemon thread for good.  A
    pipe or terminal is written through a description of the daemon's own
    with O_NONBLOCK (setting it on the caller's would change the caller's
    descriptor too), a socket with MSG_DONTWAIT; a file or another device
    does not wait on a reader.  What cannot be written at once is dropped
    (the status still says the action did not run)."""
    st = os.fstat(fd)
    if stat.S_ISSOCK(st.st_mode):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        finally:
            sock.close()
        return
    if stat.S_ISFIFO(st.st_mode) or os.isatty(fd):
        try:
            own = os.open(
                f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
            )
        except OSError:
            # Not ours to open again (a pipe another user made): written
            # only when it has room now.  For a pipe, room for one more
            # buffer takes a write of up to PIPE_BUF bytes whole.
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            if poller.poll(0):
                os.write(fd, data[:4096])
            return
        try:
            os.write(own, data)
        finally:
            os.close(own)
        return
    os.write(fd, data)


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    """``n`` bytes of the request, all within HANDSHAKE_TIMEOUT: a caller
    that sends a header and then stalls holds a thread that long, not for
    good."""
    parts = []
    before = conn.gettimeout()
    conn.settimeout(protocol.HANDSHAKE_TIMEOUT)
    deadline = time.monotonic() + protocol.HANDSHAKE_TIMEOUT
    try:
        while n > 0:
            conn.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                chunk = conn.recv(min(n, 1 << 20))
            except TimeoutError:
                raise SpecError(
                    f"the request did not arrive within {protocol.HANDSHAKE_TIMEOUT:g} s",
                    field="request",
                ) from None
            if not chunk:
                raise EOFError("the launcher closed the connection")
            parts.append(chunk)
            n -= len(chunk)
    finally:
        conn.settimeout(before)
    return b"".join(parts)


def idle_from_env() -> float:
    value = os.environ.get("HERMETIC_SERVE_IDLE")
    if not value:
        return DEFAULT_IDLE
    try:
        idle = float(value)
    except ValueError:
        raise SpecError(f"HERMETIC_SERVE_IDLE={value!r} is not a number of seconds") from None
    if not idle > 0:
        raise SpecError(f"HERMETIC_SERVE_IDLE={value!r} must be positive")
    return idle


def serve(*, idle: float | None = None, detach: bool = False) -> int:
    """Run the daemon for this user's runtime directory; with ``detach``,
    in the background, returning once it listens (0) or failed (EXIT_SETUP)."""
    directory = protocol.checked_runtime_dir()
    seconds = idle if idle is not None else idle_from_env()
    if not detach:
        return _serving(Daemon(directory, seconds))
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child ends in os._exit)
        code = 1
        try:
            os.close(ready_r)
            os.setsid()
            if os.fork() > 0:
                os._exit(0)
            os.chdir("/")
            _quiet_stdio(os.path.join(directory, "serve.log"))
            code = _serving(Daemon(directory, seconds), ready_w)
        finally:
            # os._exit skips the interpreter's exit handlers, which remove
            # what the sandboxes' pools made (the cgroup v1 slots): run them.
            with contextlib.suppress(BaseException):
                atexit._run_exitfuncs()
            os._exit(code)
    os.close(ready_w)
    os.waitpid(pid, 0)
    try:
        word = os.read(ready_r, 1)
    finally:
        os.close(ready_r)
    return 0 if word else EXIT_SETUP


def _serving(daemon: Daemon, ready_fd: int = -1) -> int:
    """daemon.run(), stopping (gracefully) on SIGTERM or SIGINT."""

    def stop(_sig: int, _frame: object) -> None:
        daemon.stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    return daemon.run(ready_fd)


def _quiet_stdio(log: str) -> None:
    """stdin from /dev/null; stdout and stderr appended to the log."""
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)


def control(magic: bytes) -> tuple[int, bytes] | None:
    """Send a control request (STATUS or STOP) to this user's daemon: its
    status word and the rest of its answer, or None when none listens."""
    if not os.path.lexists(protocol.runtime_dir()):
        return None  # no daemon ever ran here
    directory = protocol.checked_runtime_dir(create=False)
    path = os.path.join(directory, "serve.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        seen: list[bytes] = []
        try:
            refused = prove(sock, accept=(protocol.PROVE, *protocol.OLDER_CONTROL), seen=seen)
        except OSError as e:
            raise SpecError(
                f"cannot prove to the daemon that this caller may use it: {e}"
            ) from None
        if refused is not None:
            return refused[0], refused[1]
        # A caller refused after its challenge may find the connection
        # closed: the refusal is read all the same.
        word = protocol.OLDER_CONTROL.get(seen[0], {}).get(magic, magic) if seen else magic
        with contextlib.suppress(OSError):
            sock.sendall(protocol.HEADER.pack(word, 0))
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if len(data) < protocol.STATUS_WORD.size:
        raise SpecError("the daemon closed the connection without an answer")
    word, status = protocol.STATUS_WORD.unpack(data[: protocol.STATUS_WORD.size])
    return status, data[protocol.STATUS_WORD.size :]


def wait_stopped(limit: float = 60.0) -> bool:
    """Wait until this user's daemon has exited (its lock is free and its
    pid gone), at most ``limit`` seconds; whether it did."""
    directory = protocol.checked_runtime_dir(create=False)
    lock_path = os.path.join(directory, "serve.lock")
    deadline = time.monotonic() + limit
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return True
    try:
        pid_text = os.read(fd, 32).decode("ascii", "replace").strip()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.02)
    finally:
        os.close(fd)
    # The lock goes as run() returns; the process follows at once.
    while pid_text.isdigit():
        try:
            with open(f"/proc/{pid_text}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                    break  # exited; its parent (init) reaps it
        except FileNotFoundError:
            break
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _open_files() -> int:
    """The descriptors this process may open: its soft RLIMIT_NOFILE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20
