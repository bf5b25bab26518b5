"""A real BuildGrid farm on this machine, for the worker's tests.

BuildGrid 0.9.1 (PyPI) needs Python 3.13 and PostgreSQL (it refuses
sqlite).  :func:`buildgrid_venv` makes (or reuses) a virtual environment for
it under /var/tmp/hermetic-buildgrid; :class:`Farm` starts a private
PostgreSQL cluster on a free loopback port (as the ``postgres`` user when
run as root: initdb refuses root), migrates BuildGrid's schema, writes a
small config (in-memory LRU CAS and action cache, execution, bots, CAS,
ByteStream and action-cache services for one instance) and starts
``bgd server``.  :meth:`Farm.stop` stops everything it started, by pid, and
removes its directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence

BUILDGRID = "buildgrid==0.9.1"
VENV = os.environ.get("HERMETIC_BUILDGRID_VENV", "/var/tmp/hermetic-buildgrid/venv")
PYTHON313 = [
    os.path.expanduser("~/.pyenv/versions/3.13.0/bin/python3"),
    "/root/.pyenv/versions/3.13.0/bin/python3",
    "/usr/local/bin/python3.13",
    "/usr/bin/python3.13",
]
PG_BINS = ["/usr/lib/postgresql/15/bin", "/usr/local/bin"]
INSTANCE = "main"


class FarmUnavailable(Exception):
    """What this machine lacks to run the farm (the reason for a skip)."""


def _python313() -> str:
    for p in PYTHON313:
        if os.access(p, os.X_OK):
            return p
    raise FarmUnavailable(f"BuildGrid 0.9.1 needs Python 3.13; none of {PYTHON313} exists")


def _pg_bin(name: str) -> str:
    for d in PG_BINS:
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            return path
    raise FarmUnavailable(f"PostgreSQL's {name} is not installed (looked in {PG_BINS})")


def buildgrid_venv() -> str:
    """The bin/ directory of a virtual environment holding BuildGrid, made
    on first use (pip install) and reused after; a marker file says the
    install finished."""
    bindir = os.path.join(VENV, "bin")
    marker = os.path.join(VENV, ".hermetic-complete")
    python = os.path.join(bindir, "python3")
    if os.path.exists(python):
        real = os.path.realpath(python)
        if not os.access(real, os.X_OK):
            raise FarmUnavailable(
                f"{VENV} was made by another user with an interpreter this one cannot "
                f"run ({real}): run the suite as that user, or set HERMETIC_BUILDGRID_VENV"
            )
        if not os.path.exists(marker):
            probe = subprocess.run([python, "-c", "import buildgrid.server"], capture_output=True)
            if probe.returncode == 0 and os.access(os.path.join(bindir, "bgd"), os.X_OK):
                with open(marker, "w"):
                    pass
    if os.path.exists(marker):
        return bindir
    python313 = _python313()
    shutil.rmtree(VENV, ignore_errors=True)
    os.makedirs(os.path.dirname(VENV), exist_ok=True)
    subprocess.run([python313, "-m", "venv", VENV], check=True, capture_output=True)
    done = subprocess.run(
        [os.path.join(bindir, "pip"), "install", "-q", BUILDGRID], capture_output=True, text=True
    )
    if done.returncode != 0:
        shutil.rmtree(VENV, ignore_errors=True)
        raise FarmUnavailable(f"pip install {BUILDGRID} failed: {done.stderr[-2000:]}")
    with open(marker, "w"):
        pass
    return bindir


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: str, limit: float) -> None:
    """Until something listens on ``port`` (a bound proving termination)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {_tail(log)}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {limit} s: {_tail(log)}")


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-3000:]
    except OSError as e:
        return f"(no log: {e})"


CONFIG = """\
server:
  - !channel
    address: "127.0.0.1:{port}"
    insecure-mode: true

connections:
  - !sql-connection &sql
    connection-string: {db}
    pool-size: 5
    pool-timeout: 30
    max-overflow: 10

storages:
  - !lru-storage &cas
    size: 512MB

caches:
  - !lru-action-cache &cache
    storage: *cas
    max-cached-refs: 1024
    allow-updates: true
    cache-failed-actions: false

schedulers:
  - !sql-scheduler &scheduler
    sql: *sql
    storage: *cas
    action-cache: *cache
    bot-session-keepalive-timeout: 60
    max-execution-timeout: 600
    property-set: !dynamic-property-set
      # A job asking for pool=X goes only to a worker started with
      # --platform pool=X (the tests place actions on one worker so).
      match-property-keys:
        - pool

instances:
  - name: {instance}
    services:
      - !action-cache
        cache: *cache
      - !execution
        scheduler: *scheduler
      - !bots
        scheduler: *scheduler
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas

thread-pool-size: 30
"""


class Farm:
    """PostgreSQL and a BuildGrid server, started in a private directory."""

    def __init__(self) -> None:
        self.bin = buildgrid_venv()
        self.pg_ctl = _pg_bin("pg_ctl")
        self.initdb = _pg_bin("initdb")
        self.dir = tempfile.mkdtemp(prefix="hermetic-farm-")
        os.chmod(self.dir, 0o755)
        self.port = 0
        self.server: subprocess.Popen[bytes] | None = None
        self._pg_started = False
        self._pg_user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._pg_user = pwd.getpwnam("postgres")
            except KeyError:
                raise FarmUnavailable("no 'postgres' user to run PostgreSQL as") from None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def _as_pg(self, argv: Sequence[str]) -> list[str]:
        if self._pg_user is None:
            return list(argv)
        u = self._pg_user
        return ["setpriv", f"--reuid={u.pw_uid}", f"--regid={u.pw_gid}", "--clear-groups", *argv]

    def start(self) -> Farm:
        try:
            self._start_postgres()
            self._start_buildgrid()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_postgres(self) -> None:
        data = os.path.join(self.dir, "pg")
        os.mkdir(data, 0o700)
        if self._pg_user is not None:
            os.chown(data, self._pg_user.pw_uid, self._pg_user.pw_gid)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": self.dir}
        subprocess.run(
            self._as_pg([self.initdb, "-D", data, "-U", "bgd", "--auth=trust", "-E", "UTF8"]),
            check=True,
            capture_output=True,
            env=env,
            cwd=self.dir,
        )
        self.pg_port = free_port()
        opts = f"-p {self.pg_port} -k {data} -c listen_addresses=127.0.0.1"
        log = os.path.join(data, "log")
        subprocess.run(
            self._as_pg(
                [self.pg_ctl, "-D", data, "-o", opts, "-l", log, "-w", "-t", "60", "start"]
            ),
            check=True,
            capture_output=True,
            env=env,
            cwd=self.dir,
        )
        self._pg_started = True
        self._pg_data = data
        subprocess.run(
            self._as_pg(
                [
                    os.path.join(os.path.dirname(self.initdb), "createdb"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.pg_port),
                    "-U",
                    "bgd",
                    "bgd",
                ]
            ),
            check=True,
            capture_output=True,
            env=env,
            cwd=self.dir,
        )

    def _start_buildgrid(self) -> None:
        db = f"postgresql://bgd@127.0.0.1:{self.pg_port}/bgd"
        bgd = os.path.join(self.bin, "bgd")
        done = subprocess.run(
            [bgd, "migrate", "apply", db], capture_output=True, text=True, cwd=self.dir
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"bgd migrate apply failed: {done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        self.port = free_port()
        config = os.path.join(self.dir, "buildgrid.yml")
        with open(config, "w") as f:
            f.write(CONFIG.format(port=self.port, db=db, instance=INSTANCE))
        self._run_server()

    def _run_server(self) -> None:
        bgd = os.path.join(self.bin, "bgd")
        config = os.path.join(self.dir, "buildgrid.yml")
        log = os.path.join(self.dir, "buildgrid.log")
        with open(log, "ab") as out:
            self.server = subprocess.Popen(
                [bgd, "server", "start", config],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
                start_new_session=True,
            )
        _wait_port(self.port, self.server, log, 120)

    def _stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()

    def restart(self) -> None:
        """Stop the BuildGrid server and start it again on the same port (the
        database, and so the queue, stay)."""
        self._stop_server()
        self._run_server()

    def log(self) -> str:
        return _tail(os.path.join(self.dir, "buildgrid.log"))

    def execute(
        self, input_root: str, argv: Sequence[str], *, outputs: Sequence[str] = (), out_dir: str
    ) -> subprocess.CompletedProcess[str]:
        """``bgd execute command``: BuildGrid's own client."""
        cmd = [
            os.path.join(self.bin, "bgd"),
            "execute",
            "--remote",
            f"http://{self.target}",
            "--instance-name",
            INSTANCE,
            "command",
            "--output-directory",
            out_dir,
        ]
        for o in outputs:
            cmd += ["--output-file", o]
        cmd += [input_root, *argv]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
        )

    def stop(self) -> None:
        self._stop_server()
        if self._pg_started:
            subprocess.run(
                self._as_pg([self.pg_ctl, "-D", self._pg_data, "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                cwd=self.dir,
            )
            self._pg_started = False
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def farm() -> Iterator[Farm]:
    f = Farm().start()
    try:
        yield f
    finally:
        f.stop()
