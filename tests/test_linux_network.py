"""NetworkPolicy from inside the sandbox: the egress proxy and the host network."""

from __future__ import annotations

import json
import socket

import pytest
from test_linux_isolation import probe, spec_for

from hermetic import NetworkPolicy, ResourceLimits, SandboxSpec, SpecError

pytestmark = pytest.mark.linux


FETCH = """
import json, os, socket, urllib.request, urllib.error
def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"
    except OSError as e:
        return type(e).__name__
def direct(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return "connected"
    except OSError as e:
        return type(e).__name__
def outside():
    try:
        socket.create_connection(("192.0.2.1", 80), timeout=5).close()
        return "connected"
    except OSError as e:
        return type(e).__name__
def tunnel(port):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    s.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\nHost: 127.0.0.1:{port}\\r\\n\\r\\n".encode())
    status = s.recv(4096).split(b"\\r\\n")[0].decode()
    if " 200 " not in status:
        return status
    s.sendall(b"GET /tunnelled HTTP/1.0\\r\\n\\r\\n")
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    return data.split(b"\\r\\n\\r\\n", 1)[1].decode()
"""


def test_allow_hosts_reaches_exactly_the_listed_endpoint(runner, servers):
    listed, unlisted = servers
    spec = spec_for(network=NetworkPolicy.allow_hosts([f"127.0.0.1:{listed}"]))
    out = probe(
        runner,
        spec,
        FETCH
        + f"""
print(json.dumps({{
    "listed": get("http://127.0.0.1:{listed}/plain"),
    "unlisted": get("http://127.0.0.1:{unlisted}/plain"),
    "tunnel": tunnel({listed}),
    "tunnel_unlisted": tunnel({unlisted}),
    "direct": direct({listed}),
    "outside": outside(),
    "env": {{k: os.environ[k] for k in sorted(os.environ) if "proxy" in k.lower()}},
}}))
""",
    )
    seen = json.loads(out.text)
    assert seen["listed"] == f"hello from {listed} /plain"
    assert seen["unlisted"] == "HTTP 403"
    assert seen["tunnel"] == f"hello from {listed} /tunnelled"
    assert seen["tunnel_unlisted"] == "HTTP/1.1 403 Forbidden"
    # The sandbox's own loopback has no server there; nothing else is routed.
    assert seen["direct"] == "ConnectionRefusedError"
    assert seen["outside"] == "OSError"  # ENETUNREACH
    url = "http://127.0.0.1:3128"
    assert seen["env"] == {
        "ALL_PROXY": url,
        "HTTPS_PROXY": url,
        "HTTP_PROXY": url,
        "NO_PROXY": "",  # a listed endpoint is the host's loopback
        "all_proxy": url,
        "http_proxy": url,
        "https_proxy": url,
        "no_proxy": "",
    }
    refused = [v for v in out.raw["violations"] if v["kind"] == "network"]
    assert {v["attempted"] for v in refused} == {f"127.0.0.1:{unlisted}"}
    assert {v["decision"] for v in refused} == {"denied"}
    assert out.raw["hermetic"] is True


def test_without_allow_dns_names_are_not_resolved(runner, servers):
    listed, _ = servers
    policy = NetworkPolicy(
        is_hermetic=False,
        allow_http=True,
        allowed_hosts=(f"localhost:{listed}",),
    )
    out = probe(
        runner, spec_for(network=policy), FETCH + f"print(get('http://localhost:{listed}/'))"
    )
    assert out.text.strip() == "HTTP 403"
    assert [v["attempted"] for v in out.raw["violations"]] == [f"localhost:{listed}"]


def test_host_network_is_reachable_and_not_hermetic(runner, servers):
    listed, _ = servers
    out = probe(runner, spec_for(network=NetworkPolicy.host()), FETCH + f"print(direct({listed}))")
    assert out.text.strip() == "connected"
    assert out.raw["hermetic"] is False


def test_network_policies_that_allow_nothing_or_contradict_are_refused():
    with pytest.raises(SpecError, match="allows nothing"):
        SandboxSpec(network=NetworkPolicy(is_hermetic=False)).validate()
    with pytest.raises(SpecError, match="cannot be narrowed"):
        SandboxSpec(
            network=NetworkPolicy(is_hermetic=False, host_network=True, allowed_hosts=("a:1",))
        ).validate()
    with pytest.raises(SpecError, match="host_network"):
        SandboxSpec(network=NetworkPolicy(host_network=True)).validate()


def test_proxy_listens_only_inside_the_sandbox(servers):
    # Nothing listens on the host's port 3128 because of a sandbox.
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", 3128)) != 0


def test_max_network_io_bounds_what_the_proxy_relays(runner, servers):
    listed, _ = servers
    spec = spec_for(
        network=NetworkPolicy.allow_hosts([f"127.0.0.1:{listed}"]),
        resources=ResourceLimits(max_network_io=64),
    )
    out = probe(runner, spec, FETCH + f"print(get('http://127.0.0.1:{listed}/' + 'x' * 200))")
    assert "hello" not in out.text
    cut = [v for v in out.raw["violations"] if v["kind"] == "resource"]
    assert [v["attempted"] for v in cut] == [f"127.0.0.1:{listed}"]
    assert "max_network_io=64" in cut[0]["observed"]


def test_a_pooled_namespace_lease_interrupted_as_it_starts_goes_back_to_the_pool():
    import os

    from hermetic.platforms.linux.netns import POOL

    if os.geteuid() != 0:
        pytest.skip("pooled network namespaces are for root callers")
    with POOL.lease():
        pass
    size = POOL.size()
    real = POOL._lock

    class RaisingOnRelease:
        """The pool's lock, raising once as it is released after a
        descriptor left the free list (where a signal handler may run)."""

        def __init__(self) -> None:
            self.armed = True

        def __enter__(self):
            return real.__enter__()

        def __exit__(self, *exc):
            real.__exit__(*exc)
            if self.armed:
                self.armed = False
                raise KeyboardInterrupt

    POOL._lock = RaisingOnRelease()
    try:
        with pytest.raises(KeyboardInterrupt):
            with POOL.lease():
                pass
    finally:
        POOL._lock = real
    assert POOL.size() == size
