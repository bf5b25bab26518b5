"""Landlock-only isolation (user namespaces forbidden): what the seccomp
filter closes where no namespace does, tested from inside the sandbox as
the unprivileged test user and as uid 0 (a root caller without
CAP_SYS_ADMIN and without user namespaces, as in a default container).

There the action shares the host's pid space and its Unix socket
namespace: an attack that works reaches host processes and sockets, so
each test checks the host side too, not only the errno the action saw.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess

import pytest
from conftest import Runner, _as_user_cmd
from test_linux_isolation import ERRNO, probe, spec_for
from test_linux_seccomp import syscall_numbers

pytestmark = [pytest.mark.linux, pytest.mark.landlock]


@pytest.fixture(params=["user", "uid0"])
def ll_runner(request: pytest.FixtureRequest) -> Runner:
    """Landlock-only, as the test user and as uid 0 (root mapped to itself in
    a user namespace that forbids nested ones: no capability on the host)."""
    if os.geteuid() != 0:
        if request.param == "uid0":
            pytest.skip("uid 0 needs the suite to run as root")
        return Runner("landlock", None)
    if request.param == "uid0":
        return Runner("landlock", None)
    return Runner("landlock", request.getfixturevalue("test_user"))


def _denied(out) -> set[str]:
    return {
        v["attempted"].split("(")[0]
        for v in out.raw["violations"]
        if v["kind"] == "syscall" and v["decision"] == "denied"
    }


def _action_uid(runner: Runner) -> int:
    return runner.user.pw_uid if runner.user is not None else os.geteuid()


# --- Unix datagram sockets of the host ---------------------------------------

SOCKETPAIR_PROBE = """
import json, socket
TARGET = {target!r}
seen = {{}}
def pair(kind):
    try:
        return socket.socketpair(socket.AF_UNIX, kind)
    except OSError as e:
        seen["socketpair %d" % kind] = errno.errorcode[e.errno]
        return None
for name, kind in (("dgram", socket.SOCK_DGRAM),
                   ("dgram cloexec nonblock",
                    socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK),
                   ("raw", socket.SOCK_RAW)):
    p = pair(kind)
    if p is None:
        seen[name] = seen.pop("socketpair %d" % kind)
        continue
    seen[name] = "ok"
    seen[name + " sendto"] = attempt(p[0].sendto, b"SANDBOX-" + name.encode(), TARGET)
    seen[name + " connect"] = attempt(p[1].connect, TARGET)
# The pairs that stay a pair: neither can be pointed at the host socket.
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
seen["stream connect"] = attempt(a.connect, TARGET)
seen["stream sendto"] = attempt(a.sendto, b"SANDBOX-stream", TARGET)
a.sendall(b"ping")
seen["stream works"] = b.recv(4).decode()
flags = socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
seen["stream with flags"] = attempt(socket.socketpair, socket.AF_UNIX, flags)
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
seen["seqpacket connect"] = attempt(a.connect, TARGET)
# An address given to a connected seqpacket socket is ignored: the peer gets it.
seen["seqpacket sendto"] = attempt(a.sendto, b"SANDBOX-seqpacket", TARGET)
b.setblocking(False)
seen["seqpacket peer got"] = attempt(b.recv, 100)
print(json.dumps(seen))
"""


def test_socketpair_cannot_reach_a_host_datagram_socket(ll_runner, scratch):
    runner = ll_runner
    hidden = os.path.join(scratch, "hidden")  # undeclared: neither input nor output
    os.mkdir(hidden)
    os.chmod(hidden, 0o755)
    target = os.path.join(hidden, "sock")
    host = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        host.bind(target)
        os.chmod(target, 0o666)
        out = probe(runner, spec_for(), ERRNO + SOCKETPAIR_PROBE.format(target=target))
        seen = json.loads(out.text)
        host.setblocking(False)
        received = []
        while True:
            try:
                received.append(host.recv(100))
            except BlockingIOError:
                break
    finally:
        host.close()
    assert received == [], (received, seen)
    assert seen == {
        "dgram": "EPERM",
        "dgram cloexec nonblock": "EPERM",
        "raw": "EPERM",  # AF_UNIX's SOCK_RAW is a datagram socket
        # A connected end cannot be connected again (the datagram target
        # answers EPROTOTYPE before the kernel looks at the state).
        "stream connect": "EPROTOTYPE",
        "stream sendto": "EISCONN",
        "stream works": "ping",
        "stream with flags": "ok",
        "seqpacket connect": "EPROTOTYPE",
        "seqpacket sendto": "ok",
        "seqpacket peer got": "ok",
    }, out.stderr
    assert "socketpair" in _denied(out), out.raw["violations"]


# --- Host processes of the same uid ---------------------------------------------

PROCESS_PROBE = """
import ctypes, json, resource
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = json.loads({numbers!r})
VICTIMS = {victims!r}
UNUSED = {unused!r}  # a pgrp and a uid with no process: the call only says ESRCH
def sys(name, *args):
    r = libc.syscall(NR[name], *args)
    return "ok" if r != -1 else errno.errorcode[ctypes.get_errno()]
def ppid(p):
    with open("/proc/%d/status" % p) as f:
        return int([l for l in f if l.startswith("PPid:")][0].split()[1])
seen = {{}}
targets = dict(VICTIMS)
# The caller: the action's parent is the sandbox's init, its parent the caller.
targets["caller"] = ppid(ppid(os.getpid()))
for who, pid in targets.items():
    seen[who + " prlimit"] = attempt(resource.prlimit, pid, resource.RLIMIT_NOFILE, (7, 7))
    seen[who + " prlimit fsize"] = attempt(resource.prlimit, pid, resource.RLIMIT_FSIZE, (0, 0))
    seen[who + " setpriority"] = attempt(os.setpriority, os.PRIO_PROCESS, pid, 19)
    seen[who + " affinity"] = attempt(os.sched_setaffinity, pid, {{0}})
    seen[who + " setscheduler"] = attempt(
        os.sched_setscheduler, pid, os.SCHED_IDLE, os.sched_param(0))
    seen[who + " setparam"] = attempt(os.sched_setparam, pid, os.sched_param(0))
    attr = (ctypes.c_uint32 * 14)(56, os.SCHED_IDLE)  # struct sched_attr, version 0
    seen[who + " setattr"] = sys("sched_setattr", pid, attr, 0)
    seen[who + " ioprio"] = sys("ioprio_set", 1, pid, (3 << 13))  # WHO_PROCESS, IDLE
seen["setpriority pgrp"] = sys("setpriority", os.PRIO_PGRP, UNUSED, 19)
seen["setpriority user"] = sys("setpriority", os.PRIO_USER, UNUSED, 19)
seen["ioprio pgrp"] = sys("ioprio_set", 2, UNUSED, (3 << 13))
seen["ioprio user"] = sys("ioprio_set", 3, UNUSED, (3 << 13))
# What the action may do to itself stays possible (pid 0: ulimit, nice,
# taskset, chrt and ionice pass it).
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
seen["self setrlimit"] = attempt(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
seen["self prlimit 0"] = attempt(resource.prlimit, 0, resource.RLIMIT_CORE, (0, 0))
seen["self nice"] = attempt(os.nice, 1)
seen["self affinity"] = attempt(os.sched_setaffinity, 0, os.sched_getaffinity(0))
seen["self setscheduler"] = attempt(
    os.sched_setscheduler, 0, os.SCHED_BATCH, os.sched_param(0))
seen["self ioprio"] = sys("ioprio_set", 1, 0, (2 << 13) | 4)  # best effort, level 4
print(json.dumps(seen))
"""


#: Fallbacks, for a module whose name table lacks these calls.
_NUMBERS = {
    "x86_64": {"sched_setattr": 314, "ioprio_set": 251, "setpriority": 141},
    "aarch64": {"sched_setattr": 274, "ioprio_set": 30, "setpriority": 140},
}


def _unused_id() -> int:
    """A number that is neither a pid (so no process group) nor a uid of any process."""
    used = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            used.add(int(name))
            try:
                used.add(os.stat(f"/proc/{name}").st_uid)
            except OSError:
                pass
    n = 3_999_999
    while n in used:
        n -= 1
    return n


def _sched_state(pid: int) -> dict[str, object]:
    with open(f"/proc/{pid}/limits") as f:
        nofile = [line.split()[3] for line in f if line.startswith("Max open files")][0]
    with open(f"/proc/{pid}/limits") as f:
        fsize = [line.split()[3] for line in f if line.startswith("Max file size")][0]
    return {
        "nofile": nofile,
        "fsize": fsize,
        "nice": os.getpriority(os.PRIO_PROCESS, pid),
        "affinity": sorted(os.sched_getaffinity(pid)),
        "policy": os.sched_getscheduler(pid),
        "ioprio": subprocess.run(
            ["ionice", "-p", str(pid)], capture_output=True, text=True
        ).stdout.strip(),
    }


def test_host_processes_limits_and_scheduling_are_out_of_reach(ll_runner, scratch):
    runner = ll_runner
    argv = ["sleep", "600"]
    if runner.user is not None:
        argv = _as_user_cmd(runner.user, argv)
    victim = subprocess.Popen(argv)
    try:
        # setpriv execs sleep: wait until the victim is the sleep, of the action's uid.
        for _ in range(1000):
            with open(f"/proc/{victim.pid}/status") as f:
                status = f.read()
            if "Name:\tsleep" in status:
                break
            subprocess.run(["sleep", "0.01"], check=True)
        assert os.stat(f"/proc/{victim.pid}").st_uid == _action_uid(runner)
        before = _sched_state(victim.pid)
        numbers = syscall_numbers()
        wanted = {k: numbers.get(k, v) for k, v in _NUMBERS[platform.machine()].items()}
        code = PROCESS_PROBE.format(
            numbers=json.dumps(wanted), victims={"host": victim.pid}, unused=_unused_id()
        )
        out = probe(runner, spec_for(), ERRNO + code)
        after = _sched_state(victim.pid)
    finally:
        victim.kill()
        victim.wait()
    seen = json.loads(out.text)
    assert after == before
    # The caller was not touched either: its audit and scans ran.
    assert "audit_error" not in out.raw or not out.raw["audit_error"], out.raw
    refused = {k: v for k, v in seen.items() if not k.startswith("self ")}
    assert refused == {k: "EPERM" for k in refused}, out.stderr
    assert {k: v for k, v in seen.items() if k.startswith("self ")} == {
        "self setrlimit": "ok",
        "self prlimit 0": "ok",
        "self nice": "ok",
        "self affinity": "ok",
        "self setscheduler": "ok",
        "self ioprio": "ok",
    }, out.stderr
    assert {
        "prlimit64",
        "setpriority",
        "sched_setaffinity",
        "sched_setscheduler",
        "sched_setparam",
        "sched_setattr",
        "ioprio_set",
    } <= _denied(out), out.raw["violations"]


# --- File metadata outside the outputs ------------------------------------------

METADATA_PROBE = """
import json
OUT, SRC, HID = {out!r}, {src!r}, {hid!r}
UID, GID = os.getuid(), os.getgid()
seen = {{}}
# Outside every writable root: an undeclared file and directory, an input.
seen["chmod undeclared"] = attempt(os.chmod, HID + "/owned", 0o666)
seen["chmod undeclared dir"] = attempt(os.chmod, HID, 0o777)
seen["utime undeclared"] = attempt(os.utime, HID + "/owned", (0, 0))
seen["utime now undeclared"] = attempt(os.utime, HID + "/owned")
seen["chown undeclared"] = attempt(os.chown, HID + "/owned", UID, GID)
seen["lchown undeclared"] = attempt(os.lchown, HID + "/owned", UID, GID)
seen["removexattr undeclared"] = attempt(os.removexattr, HID + "/owned", "user.note")
seen["chmod input"] = attempt(os.chmod, SRC + "/input", 0o666)
fd = os.open(SRC + "/input", os.O_RDONLY)
seen["fchmod input"] = attempt(os.chmod, fd, 0o666)
seen["fchown input"] = attempt(os.chown, fd, UID, GID)
seen["futimens input"] = attempt(os.utime, fd, (0, 0))
seen["fremovexattr input"] = attempt(os.removexattr, fd, "user.note")
os.close(fd)
dfd = os.open(HID, os.O_PATH | os.O_DIRECTORY)  # Landlock refuses reading it
seen["fchmodat dirfd"] = attempt(lambda: os.chmod("owned", 0o666, dir_fd=dfd))
seen["utimensat dirfd"] = attempt(lambda: os.utime("owned", (0, 0), dir_fd=dfd))
os.close(dfd)
# Through the outputs: "..", an absolute and a relative symlink out.
seen["chmod dotdot"] = attempt(os.chmod, OUT + "/../hidden/owned", 0o666)
os.symlink(HID + "/owned", OUT + "/abs-link")
os.symlink("../hidden/owned", OUT + "/rel-link")
seen["chmod abs symlink"] = attempt(os.chmod, OUT + "/abs-link", 0o666)
seen["chmod rel symlink"] = attempt(os.chmod, OUT + "/rel-link", 0o666)
seen["utime rel symlink"] = attempt(os.utime, OUT + "/rel-link", (0, 0))
# Inside the outputs, what builds do stays possible.
for name in ("f", "g", "h"):
    open(OUT + "/" + name, "w").close()
os.mkdir(OUT + "/d")
seen["ok chmod"] = attempt(os.chmod, OUT + "/f", 0o751)
seen["ok chmod dir"] = attempt(os.chmod, OUT + "/d", 0o700)
seen["ok utime"] = attempt(os.utime, OUT + "/f", (1000000, 1000000))
seen["ok utime now"] = attempt(os.utime, OUT + "/g")
seen["ok utime nofollow"] = attempt(
    lambda: os.utime(OUT + "/rel-link", (5, 5), follow_symlinks=False))
fd = os.open(OUT + "/g", os.O_WRONLY)
seen["ok fchmod"] = attempt(os.chmod, fd, 0o640)
seen["ok futimens"] = attempt(os.utime, fd, (2000000, 2000000))
os.close(fd)
os.chdir(OUT)
seen["ok chmod relative"] = attempt(os.chmod, "h", 0o604)
seen["ok chmod via dotdot"] = attempt(os.chmod, "d/../h", 0o605)
seen["ok chown same"] = attempt(os.chown, OUT + "/f", UID, GID)
seen["ok chown none"] = attempt(os.chown, OUT + "/f", -1, -1)
seen["chown other group"] = attempt(os.chown, OUT + "/f", -1, GID + 4321)
seen["chown other user"] = attempt(os.chown, OUT + "/f", UID + 4321, -1)
seen["ok chmod missing"] = attempt(os.chmod, OUT + "/missing", 0o600)
# From another thread: the listener sees the thread's id, cwd and descriptors.
import threading
def in_thread():
    seen["thread chmod undeclared"] = attempt(os.chmod, HID + "/owned", 0o666)
    seen["ok thread chmod"] = attempt(os.chmod, "h", 0o606)
t = threading.Thread(target=in_thread)
t.start()
t.join()
# A file without a name beneath an output: nothing to check it against.
fd = os.open(OUT, os.O_TMPFILE | os.O_WRONLY, 0o600)
seen["fchmod tmpfile"] = attempt(os.chmod, fd, 0o644)
os.close(fd)
# A symlink in an output flipped between a file inside and one outside while
# another thread changes its mode: the lookup the listener makes is the one
# acted on, so no flip lets the change land outside.
stop = []
def flip():
    while not stop:
        for target in ("f", HID + "/owned"):
            os.symlink(target, OUT + "/flip.new")
            os.replace(OUT + "/flip.new", OUT + "/flip")
t = threading.Thread(target=flip)
os.symlink("f", OUT + "/flip")
t.start()
results = set()
for i in range(3000):
    results.add(attempt(os.chmod, OUT + "/flip", 0o640 if i % 2 else 0o666))
stop.append(1)
t.join()
os.chmod(OUT + "/f", 0o751)
seen["ok race"] = sorted(results)
print(json.dumps(seen))
"""


def _meta(path: str) -> tuple[int, int, int, int]:
    st = os.lstat(path)
    return (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)


def test_metadata_outside_the_outputs_cannot_change(ll_runner, scratch):
    runner = ll_runner
    uid = _action_uid(runner)
    gid = runner.user.pw_gid if runner.user is not None else os.getegid()
    out_dir, src, hid = (os.path.join(scratch, d) for d in ("out", "src", "hidden"))
    for d in (out_dir, src, hid):
        os.mkdir(d)
        os.chown(d, uid, gid)
    os.chmod(hid, 0o700)
    victims = [os.path.join(hid, "owned"), os.path.join(src, "input")]
    for v in victims:
        with open(v, "w") as f:
            f.write("x")
        os.chown(v, uid, gid)
        os.chmod(v, 0o600)
        os.setxattr(v, "user.note", b"kept")
    before = {p: _meta(p) for p in (*victims, hid)}
    code = METADATA_PROBE.format(out=out_dir, src=src, hid=hid)
    out = probe(runner, spec_for(inputs=[src], outputs=[out_dir]), ERRNO + code)
    assert out.exit_code == 0, out.stderr
    seen = json.loads(out.text)
    assert {p: _meta(p) for p in before} == before
    assert all(os.getxattr(v, "user.note") == b"kept" for v in victims)
    outside = {k: v for k, v in seen.items() if not k.startswith("ok ")}
    expected = {k: "EPERM" for k in outside}
    expected["removexattr undeclared"] = expected["fremovexattr input"] = "ENOTSUP"
    assert outside == expected, out.stderr
    assert {k: v for k, v in seen.items() if k.startswith("ok ")} == {
        **{k: "ok" for k in seen if k.startswith("ok ")},
        "ok chmod missing": "ENOENT",
        "ok race": seen["ok race"],
    }, out.stderr
    # Whichever target each attempt met, it worked inside or was refused
    # (the file outside is unchanged: checked above).
    assert set(seen["ok race"]) <= {"ok", "EPERM"}, seen["ok race"]

    def mode(name: str) -> int:
        return os.lstat(os.path.join(out_dir, name)).st_mode & 0o7777

    assert (mode("f"), mode("g"), mode("h"), mode("d")) == (0o751, 0o640, 0o606, 0o700)
    assert os.stat(os.path.join(out_dir, "f")).st_mtime == 1000000
    assert os.stat(os.path.join(out_dir, "g")).st_mtime == 2000000
    assert os.lstat(os.path.join(out_dir, "rel-link")).st_mtime == 5
    # Recorded: each path outside, and the calls refused as such.
    refused = {v["attempted"] for v in out.raw["violations"] if v["kind"] == "filesystem"}
    assert {hid, os.path.join(hid, "owned"), os.path.join(src, "input")} <= refused, refused
    assert {"chown", "removexattr", "fremovexattr"} <= _denied(out), out.raw["violations"]


BUILD_SCRIPT = """
set -e
cc -O2 src/hello.c -o out/hello
cp /bin/true out/t
chmod -x out/t
chmod +x out/t
touch -d @1000000 out/t
touch out/stamp
install -m 0750 src/hello.c out/installed.c
cp -p src/hello.c out/copied.c
mkdir -p -m 0700 out/private
# The same tools on a file of the caller's outside the outputs.
chmod 0666 "$1" 2>/dev/null && echo chmod-escaped
touch -d @0 "$1" 2>/dev/null && echo touch-escaped
echo done
"""


def test_builds_still_set_modes_and_times_on_outputs(ll_runner, scratch):
    runner = ll_runner
    for d in ("src", "out", "tmp"):
        os.makedirs(os.path.join(scratch, d))
    runner.own(os.path.join(scratch, "out"))
    runner.own(os.path.join(scratch, "tmp"))
    with open(os.path.join(scratch, "src", "hello.c"), "w") as f:
        f.write('#include <stdio.h>\nint main(void){puts("built");return 0;}\n')
    os.utime(os.path.join(scratch, "src", "hello.c"), (3000000, 3000000))
    runner.own(os.path.join(scratch, "src", "hello.c"))
    from hermetic import HermeticSpecBuilder, ResourceLimits

    spec = HermeticSpecBuilder.for_build(
        workspace_root=scratch, sources=["src"], output_dir="out", temp_dir="tmp"
    ).unwrap()
    import dataclasses

    spec = dataclasses.replace(spec, resources=ResourceLimits.defaults())
    victim = os.path.join(scratch, "undeclared")
    with open(victim, "w") as f:
        f.write("x")
    os.chmod(victim, 0o600)
    runner.own(victim)
    before = _meta(victim)
    out = runner.run(spec, ["sh", "-c", BUILD_SCRIPT, "build", victim])
    assert _meta(victim) == before
    assert out.error is None, out.error
    assert (out.exit_code, out.text) == (0, "done\n"), out.stderr
    o = os.path.join(scratch, "out")
    done = subprocess.run([os.path.join(o, "hello")], capture_output=True, check=True)
    assert done.stdout == b"built\n"
    assert os.stat(os.path.join(o, "hello")).st_mode & 0o111 == 0o111  # ld's chmod
    assert os.stat(os.path.join(o, "t")).st_mode & 0o111 == 0o111
    assert os.stat(os.path.join(o, "t")).st_mtime == 1000000
    assert os.stat(os.path.join(o, "installed.c")).st_mode & 0o7777 == 0o750
    assert os.stat(os.path.join(o, "copied.c")).st_mtime == 3000000
    assert os.stat(os.path.join(o, "private")).st_mode & 0o7777 == 0o700
    # cp -p and install try extended attributes (refused everywhere, EOPNOTSUPP,
    # which they take for a filesystem without them); the rest is the victim's.
    assert {
        v["attempted"] for v in out.raw["violations"] if not v["attempted"].startswith("fsetxattr(")
    } == {victim}, out.raw["violations"]


# --- The program: namespace mode is untouched ------------------------------------


def test_only_the_landlock_options_change_these_calls():
    """With the namespace mode's options these calls are allowed as before;
    the Landlock-only options (deny_sockets, deny_sessions, emulate_metadata)
    refuse, or send to the listener, exactly the cases above."""
    from test_seccomp_program import RET_ALLOW, RET_ERRNO, RET_NOTIFY, args, build, run

    nr = syscall_numbers()
    eperm, enotsup = RET_ERRNO | 1, RET_ERRNO | 95
    meta = [n for n in ("chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown")]
    meta += ["lchown", "fchownat", "utime", "utimes", "futimesat", "utimensat"]
    meta = [nr[n] for n in meta if n in nr]
    removals = [nr[n] for n in ("removexattr", "lremovexattr", "fremovexattr", "removexattrat")]
    by_pid = [nr[n] for n in ("prlimit64", "sched_setaffinity", "sched_setscheduler")]
    by_pid += [nr[n] for n in ("sched_setparam", "sched_setattr")]
    ns = build(notify=1, audit_writes=1)
    for n in meta + removals + by_pid:
        assert run(ns, n, args(5, 0o644, 0)) == RET_ALLOW, n
    assert run(ns, nr["socketpair"], args(1, 2, 0)) == RET_ALLOW
    assert run(ns, nr["setpriority"], args(2, 77, 19)) == RET_ALLOW
    for notify in (0, 1):
        refuse = RET_NOTIFY if notify else eperm
        ll = build(
            notify=notify, audit_writes=notify, deny_sockets=1, deny_sessions=1, emulate_metadata=1
        )
        for n in meta:
            # Without a listener there is nothing to perform them: refused.
            assert run(ll, n, args(5, 0o644, 0)) == refuse, n
        for n in removals:
            assert run(ll, n, args(5, 0, 0)) == (RET_NOTIFY if notify else enotsup), n
        for n in by_pid:
            assert run(ll, n, args(0, 1, 0)) == RET_ALLOW, n
            assert run(ll, n, args(1234, 1, 0)) == refuse, n
            assert run(ll, n, args((7 << 32) | 1234, 1, 0)) == refuse, n  # a pid_t
            assert run(ll, n, args(1 << 32, 1, 0)) == RET_ALLOW, n  # the low word: 0
        for call, process in (("setpriority", 0), ("ioprio_set", 1)):
            assert run(ll, nr[call], args(process, 0, 5)) == RET_ALLOW
            assert run(ll, nr[call], args(process, 1234, 5)) == refuse
            assert run(ll, nr[call], args(process + 1, 0, 5)) == refuse
            assert run(ll, nr[call], args(process + 2, 0, 5)) == refuse
        sp = nr["socketpair"]
        for sock_type in (1, 5, 1 | 0o2000000 | 0o4000):  # stream, seqpacket, flags
            assert run(ll, sp, args(1, sock_type, 0)) == RET_ALLOW, sock_type
        for sock_type in (2, 3, 2 | 0o2000000, 4, 6, 10, 0, 15):
            assert run(ll, sp, args(1, sock_type, 0)) == refuse, sock_type
