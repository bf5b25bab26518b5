"""The egress proxy: how an action reaches its ``allowed_hosts`` and nothing else.

The action keeps a network namespace with only loopback.  Its pid 1 makes
a listening socket on 127.0.0.1:``PROXY_PORT`` inside that namespace and
hands it to the caller (csrc/linux/net.c), so only the sandbox can
connect to it, and no proxy process runs in the sandbox.  This module
serves it from the caller's process: each accepted connection is one
request, either ``CONNECT host:port`` (a tunnel, for HTTPS and anything
else over TCP) or a plain HTTP request in absolute form
(``GET http://host:port/path``).  The target must be listed exactly as
``host:port``; the proxy resolves the name (only with ``allow_dns``) and
connects from the caller's network.  Anything else is answered
``403 Forbidden`` and recorded as a "network" violation with the address
and port.  ``max_network_io``, when set, bounds the bytes relayed in both
directions over the whole execution.

The proxy variables the action gets point here (see :func:`proxy_env`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import selectors
import socket
import threading
from collections.abc import Iterable

from hermetic.core.outcome import Violation, ViolationKind
from hermetic.core.spec import SandboxSpec

__all__ = ["PROXY_PORT", "EgressProxy", "proxy_env"]

#: The port the proxy listens on inside every sandbox (a fixed number keeps
#: the environment, and so the action's inputs, the same from run to run).
PROXY_PORT = 3128
#: Longest request head accepted.
MAX_HEAD = 64 * 1024
#: Seconds to connect to a listed endpoint.
CONNECT_TIMEOUT = 10.0
#: Seconds a client may take to send its request head.
HEAD_TIMEOUT = 30.0
#: Seconds a relayed connection may stay silent in both directions.
IDLE_TIMEOUT = 300.0
#: Connections relayed at once per execution; more wait in the backlog.
MAX_CONNECTIONS = 64
#: Distinct violation records kept per execution (endpoints are the
#: action's to choose); the rest are counted in one more.
MAX_RECORDS = 1000

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def proxy_env(allowed_hosts: Iterable[str]) -> dict[str, str]:
    """The variables that send HTTP clients to the proxy.

    ``NO_PROXY`` keeps the sandbox's own loopback direct, unless a listed
    endpoint is the host's loopback: then everything goes through the proxy,
    or clients would look for that service inside the sandbox.
    """
    url = f"http://127.0.0.1:{PROXY_PORT}"
    names = {h.rpartition(":")[0] for h in allowed_hosts}
    loopback_listed = any(n in _LOOPBACK_NAMES or n.startswith("127.") for n in names)
    no_proxy = "" if loopback_listed else "localhost,127.0.0.1,::1"
    env = {}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = url
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    return env


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class _Refused(Exception):
    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class EgressProxy:
    """Serves one execution's proxy socket on a thread of the caller."""

    def __init__(
        self,
        listener_fd: int,
        allowed_hosts: Iterable[str],
        *,
        allow_http: bool,
        allow_https: bool,
        allow_dns: bool,
        max_bytes: int = 0,
    ) -> None:
        # A duplicate: the C side closes its own descriptor on release.
        self._listener = socket.socket(fileno=os.dup(listener_fd))
        try:
            self._listener.setblocking(False)
            self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        except BaseException:
            self._listener.close()
            raise
        self._allowed = frozenset(allowed_hosts)
        self._http = allow_http
        self._https = allow_https
        self._dns = allow_dns
        self._max_bytes = max_bytes
        self._relayed = 0
        self._lock = threading.Lock()
        self._violations: dict[tuple[str, str], int] = {}
        self._dropped = 0
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._stopping = False
        self._thread = threading.Thread(
            target=self._accept_loop, name="hermetic-proxy", daemon=True
        )

    @classmethod
    def for_spec(cls, listener_fd: int, spec: SandboxSpec) -> EgressProxy:
        """The proxy a spec's NetworkPolicy and max_network_io ask for."""
        net = spec.network
        return cls(
            listener_fd,
            net.allowed_hosts,
            allow_http=net.allow_http,
            allow_https=net.allow_https,
            allow_dns=net.allow_dns,
            max_bytes=spec.resources.max_network_io,
        )

    def start(self) -> EgressProxy:
        self._thread.start()
        return self

    def stop(self) -> list[Violation]:
        """Close the listener and every relayed connection; the violations seen."""
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join()
        with self._lock:
            conns = list(self._open)
            threads = list(self._threads)
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(timeout=CONNECT_TIMEOUT + 1)
        self._listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        with self._lock:
            seen = dict(self._violations)
        out = []
        for (attempted, how), count in seen.items():
            observed = how + (f", {count} times" if count > 1 else "")
            decision = "killed" if how.startswith("max_network_io") else "denied"
            kind = ViolationKind.RESOURCE if decision == "killed" else ViolationKind.NETWORK
            out.append(Violation(kind, attempted=attempted, decision=decision, observed=observed))
        if self._dropped:
            out.append(
                Violation(
                    ViolationKind.NETWORK,
                    attempted=f"{self._dropped} more requests",
                    decision="denied",
                    observed=f"beyond {MAX_RECORDS} distinct records",
                )
            )
        return out

    # -- accepting -----------------------------------------------------------

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in sel.select(timeout=1.0):
                    if key.fileobj is not self._listener or self._stopping:
                        continue
                    # At the cap, new connections wait in the backlog.
                    if not self._slots.acquire(timeout=1.0):
                        continue
                    try:
                        client, _ = self._listener.accept()
                    except OSError:
                        # Nothing pending, or out of descriptors for now:
                        # keep serving the ones already open.
                        self._slots.release()
                        continue
                    t = threading.Thread(
                        target=self._serve, args=(client,), name="hermetic-proxy-conn", daemon=True
                    )
                    with self._lock:
                        self._open.add(client)
                        self._threads = [x for x in self._threads if x.is_alive()]
                        self._threads.append(t)
                    t.start()

    def _record(self, attempted: str, how: str) -> None:
        with self._lock:
            key = (attempted, how)
            if key in self._violations or len(self._violations) < MAX_RECORDS:
                self._violations[key] = self._violations.get(key, 0) + 1
            else:
                self._dropped += 1

    # -- one connection ------------------------------------------------------

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            client.setblocking(True)
            client.settimeout(HEAD_TIMEOUT)
            head, rest = _read_head(client)
            method, target, version, headers = _parse_head(head)
            if method == "CONNECT":
                host, port = _split_authority(target, None)
                if not self._https:
                    raise _Refused("403 Forbidden", f"CONNECT to {host}:{port}: HTTPS not allowed")
            else:
                host, port, target = _absolute_target(target, headers)
                if not self._http:
                    raise _Refused("403 Forbidden", f"{method} to {host}:{port}: HTTP not allowed")
            endpoint = f"{host.lower()}:{port}"
            if endpoint not in self._allowed:
                self._record(endpoint, f"{method} through the proxy: not in allowed_hosts")
                raise _Refused("403 Forbidden", f"{endpoint} is not in allowed_hosts")
            if not self._dns and not _is_ip(host):
                self._record(endpoint, f"{method} through the proxy: names are not resolved")
                raise _Refused("403 Forbidden", f"{host}: allow_dns is off, name not resolved")
            try:
                upstream = socket.create_connection((host.strip("[]"), port), CONNECT_TIMEOUT)
            except OSError as e:
                raise _Refused("502 Bad Gateway", f"cannot reach {endpoint}: {e}") from None
            with self._lock:
                self._open.add(upstream)
            if method == "CONNECT":
                client.sendall(f"{version} 200 Connection established\r\n\r\n".encode())
                first = rest
            else:
                first = _origin_request(method, target, version, headers) + rest
            client.settimeout(None)
            upstream.settimeout(None)
            self._relay(client, upstream, first, endpoint)
        except _Refused as r:
            body = f"hermetic proxy: {r}\n".encode()
            with contextlib.suppress(OSError):
                client.sendall(
                    f"HTTP/1.1 {r.status}\r\nContent-Type: text/plain\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
        except (OSError, ValueError):
            pass
        finally:
            for s in (client, upstream):
                if s is not None:
                    with self._lock:
                        self._open.discard(s)
                    s.close()
            self._slots.release()

    def _count(self, n: int, endpoint: str) -> bool:
        """Add n relayed bytes; False once max_network_io is exceeded."""
        with self._lock:
            self._relayed += n
            over = bool(self._max_bytes) and self._relayed > self._max_bytes
        if over:
            self._record(endpoint, f"max_network_io={self._max_bytes} exceeded")
        return not over

    def _relay(self, client: socket.socket, upstream: socket.socket, first: bytes, ep: str) -> None:
        if first:
            if not self._count(len(first), ep):
                return
            upstream.sendall(first)
        peers = {client: upstream, upstream: client}
        open_reads = {client, upstream}
        with selectors.DefaultSelector() as sel:
            for s in open_reads:
                sel.register(s, selectors.EVENT_READ)
            idle = 0.0
            while open_reads and not self._stopping:
                ready = sel.select(timeout=1.0)
                idle = idle + 1.0 if not ready else 0.0
                if idle >= IDLE_TIMEOUT:
                    return
                for key, _ in ready:
                    src = key.fileobj
                    assert isinstance(src, socket.socket)
                    try:
                        data = src.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(src)
                        open_reads.discard(src)
                        with contextlib.suppress(OSError):
                            peers[src].shutdown(socket.SHUT_WR)
                        continue
                    if not self._count(len(data), ep):
                        return
                    peers[src].sendall(data)


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD:
            raise _Refused("431 Request Header Fields Too Large", "request head too large")
        chunk = sock.recv(65536)
        if not chunk:
            raise ValueError("connection closed before the request head ended")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _parse_head(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _Refused("400 Bad Request", f"not an HTTP request line: {lines[0][:200]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip(), value.strip()))
    return parts[0].upper(), parts[1], parts[2], headers


def _split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise _Refused("400 Bad Request", f"bad address {authority!r}")
        host, port_text = authority[: close + 1], authority[close + 1 :].lstrip(":")
    else:
        host, sep, port_text = authority.rpartition(":")
        if not sep:
            host, port_text = authority, ""
    if not port_text and default_port is not None:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _Refused("400 Bad Request", f"bad port in {authority!r}")
    return host, int(port_text)


def _absolute_target(target: str, headers: list[tuple[str, str]]) -> tuple[str, int, str]:
    """(host, port, origin-form path) of a proxied HTTP request."""
    if target.lower().startswith("http://"):
        rest = target[7:]
        slash = rest.find("/")
        authority, path = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    elif target.startswith("/"):
        hosts = [v for k, v in headers if k.lower() == "host"]
        if not hosts:
            raise _Refused("400 Bad Request", "request without a host")
        authority, path = hosts[0], target
    else:
        raise _Refused("400 Bad Request", f"unsupported request target {target[:200]!r}")
    authority = authority.rpartition("@")[2]  # no credentials in the address
    host, port = _split_authority(authority, 80)
    return host, port, path


_HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "te"}


def _origin_request(method: str, path: str, version: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {path} {version}"]
    lines += [f"{k}: {v}" for k, v in headers if k.lower() not in _HOP_BY_HOP]
    # One request per connection keeps the relay a plain byte pipe.
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
