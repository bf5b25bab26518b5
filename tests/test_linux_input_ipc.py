"""FIFOs and Unix sockets under a read-only input: a channel to a host process.

A read-only mount does not stop opening a FIFO for writing, nor connecting
to a Unix socket (the kernel checks neither against the mount's flags), so
these tests run the attack from inside the sandbox against a host process
the test itself starts, and assert what the host received.  docs/known-limits.md:
the paragraph on FIFOs and Unix sockets under inputs.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator

import pytest
from test_linux_isolation import ERRNO, PY, probe, spec_for

from hermetic import NetworkPolicy, SpecError
from hermetic.platforms import linux

pytestmark = pytest.mark.linux


@pytest.fixture
def var_scratch() -> Iterator[str]:
    """A world-traversable directory outside /tmp (the sandbox's /tmp is private)."""
    path = tempfile.mkdtemp(prefix="hermetic-test-", dir="/var/tmp")
    os.chmod(path, 0o755)
    try:
        yield os.path.realpath(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _fifo_with_reader(directory: str) -> tuple[str, int]:
    """A FIFO any user may open, held open for reading by this (host) process."""
    fifo = os.path.join(directory, "fifo")
    os.mkfifo(fifo)
    os.chmod(fifo, 0o666)
    return fifo, os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)


def _drain(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""
    finally:
        os.close(fd)


WRITE_FIFO = """
def write(path):
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    os.write(fd, b"leak")
"""


@pytest.mark.parametrize("where", ["tmp", "var_tmp"])
def test_a_fifo_under_an_input_cannot_be_written(fs_runner, scratch, var_scratch, where):
    """Outside /tmp Landlock's missing WRITE_FILE refuses the open.  Under the
    private /tmp (namespaces), whose Landlock rule grants writing to its whole
    subtree, an input holding a FIFO is refused before anything runs; without
    namespaces there is no private /tmp and Landlock refuses the open."""
    base = scratch if where == "tmp" else var_scratch
    src = os.path.join(base, "src")
    os.mkdir(src)
    os.chmod(src, 0o755)
    fifo, reader = _fifo_with_reader(src)
    code = ERRNO + WRITE_FIFO + f"print(attempt(write, {fifo!r}))"
    out = fs_runner.run(spec_for(inputs=[src]), [PY, "-c", code])
    assert _drain(reader) == b""
    if where == "tmp" and not fs_runner.landlock:
        assert out.error is not None
        assert "FIFO" in out.error and fifo in out.error, out.error
    else:
        assert out.error is None, out.error
        assert out.text.split() == ["EACCES"], out.stderr


def test_a_fifo_in_a_directory_the_caller_cannot_list_is_not_a_way_out(fs_runner, scratch):
    """A directory that can be searched but not read (0711, root's) hides
    the names in it from a normal caller's check, not its files from the
    action: under the private /tmp such an input is refused as unverifiable
    (a root caller lists it and finds the FIFO); Landlock refuses the open
    where there is no private /tmp."""
    src = os.path.join(scratch, "src")
    os.mkdir(src)
    os.chmod(src, 0o755)
    hidden = os.path.join(src, "hid")
    os.mkdir(hidden)
    fifo, reader = _fifo_with_reader(hidden)
    os.chmod(hidden, 0o711)
    code = ERRNO + WRITE_FIFO + f"print(attempt(write, {fifo!r}))"
    out = fs_runner.run(spec_for(inputs=[src]), [PY, "-c", code])
    assert _drain(reader) == b""
    if fs_runner.landlock:
        assert out.error is None, out.error
        assert out.text.split() == ["EACCES"], out.stderr
    elif fs_runner.user is None:
        assert out.error is not None and "FIFO" in out.error and fifo in out.error, out.error
    else:
        assert out.error is not None and "cannot be listed" in out.error, out.error
        assert hidden in out.error, out.error


def test_a_declared_input_that_is_a_fifo_or_socket_is_refused(scratch):
    fifo = os.path.join(scratch, "fifo")
    os.mkfifo(fifo)
    sock_path = os.path.join(scratch, "sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(sock_path)
        fds = sorted(os.listdir("/proc/self/fd"))
        for path, kind in ((fifo, "FIFO"), (sock_path, "socket")):
            with pytest.raises(SpecError, match=f"input {path!r} is a {kind}") as info:
                linux.prepare(spec_for(inputs=[path]))
            assert info.value.value == path
        # Refused before anything is built: no descriptor (a prepared mount
        # namespace's, say) is left open.
        assert sorted(os.listdir("/proc/self/fd")) == fds


def test_a_fifo_in_an_output_stays_writable(fs_runner, scratch):
    """Outputs are writable, FIFOs in them too: the refusal is for inputs only."""
    out_dir = os.path.join(scratch, "out")
    os.mkdir(out_dir)
    fs_runner.own(out_dir)
    fifo, reader = _fifo_with_reader(out_dir)
    out = probe(
        fs_runner,
        spec_for(outputs=[out_dir]),
        ERRNO + WRITE_FIFO + f"print(attempt(write, {fifo!r}))",
    )
    assert out.text.split() == ["ok"], out.stderr
    assert _drain(reader) == b"leak"


@pytest.mark.parametrize("net", ["hermetic", "host"])
def test_unix_sockets_under_an_input(fs_runner, var_scratch, net):
    """connect() and sendto() a host process's Unix sockets under an input.

    Landlock ABI 9 (Linux 7.1) handles LANDLOCK_ACCESS_FS_RESOLVE_UNIX, never
    granted on inputs: EACCES.  Before it no layer can refuse the lookup (a
    read-only mount does not, seccomp cannot read the address without a
    race), and the test holds the behaviour docs/known-limits.md
    documents: both reach the host process, except without namespaces on a
    hermetic network, where seccomp refuses socket() itself.
    """
    src = os.path.join(var_scratch, "src")
    os.mkdir(src)
    os.chmod(src, 0o755)
    stream_path, dgram_path = os.path.join(src, "stream"), os.path.join(src, "dgram")
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        stream.bind(stream_path)
        stream.listen(1)
        stream.setblocking(False)
        dgram.bind(dgram_path)
        dgram.setblocking(False)
        os.chmod(stream_path, 0o777)
        os.chmod(dgram_path, 0o777)
        policy = NetworkPolicy.host() if net == "host" else NetworkPolicy.hermetic()
        out = probe(
            fs_runner,
            spec_for(inputs=[src], network=policy),
            ERRNO
            + f"""
import socket
def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect({stream_path!r})
def send():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(b"leak", {dgram_path!r})
print(attempt(connect), attempt(send))
""",
        )
        try:
            stream.accept()[0].close()
            accepted = True
        except BlockingIOError:
            accepted = False
        try:
            received = dgram.recv(16)
        except BlockingIOError:
            received = b""
    finally:
        stream.close()
        dgram.close()
    abi = linux.capabilities().landlock_abi or 0
    if fs_runner.landlock and net == "hermetic":
        expected = ["EPERM", "EPERM"]
    elif abi >= 9:
        expected = ["EACCES", "EACCES"]
    else:
        expected = ["ok", "ok"]  # docs/known-limits.md: no layer refuses it here
    assert out.text.split() == expected, out.stderr
    assert (accepted, received) == ((True, b"leak") if expected == ["ok", "ok"] else (False, b""))


def test_a_fifo_under_an_input_can_be_opened_for_reading(fs_runner, var_scratch):
    """The documented behaviour (docs/known-limits.md): READ_FILE covers a
    FIFO as any file, so an action may read what a host process writes into
    a FIFO under an input (taking it from any other reader)."""
    src = os.path.join(var_scratch, "src")
    os.mkdir(src)
    os.chmod(src, 0o755)
    fifo, reader = _fifo_with_reader(src)
    writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(writer, b"from-host")
        out = probe(
            fs_runner,
            spec_for(inputs=[src]),
            f"import os\nprint(os.read(os.open({fifo!r}, os.O_RDONLY | os.O_NONBLOCK), 64))",
        )
    finally:
        os.close(writer)
    assert out.text.split() == ["b'from-host'"], out.stderr
    assert _drain(reader) == b""
