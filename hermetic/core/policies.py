"""The policy parts of a sandbox spec: network, environment, resources, processes.

All are frozen dataclasses that check their own fields on construction, so an
invalid policy cannot exist; whether policies are consistent with each other
is checked by ``SandboxSpec.validate()``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from hermetic.core.errors import SpecError
from hermetic.core.paths import check_encodable

__all__ = ["EnvSet", "NetworkPolicy", "ProcessPolicy", "ReproducibilityPolicy", "ResourceLimits"]

# Limits end up in 64-bit kernel fields; anything larger cannot be expressed.
_MAX_LIMIT = 2**63 - 1

_GiB = 1024**3
_MiB = 1024**2


def _check_bool(value: object, field: str) -> None:
    if not isinstance(value, bool):
        raise SpecError(
            f"{field} must be a bool, got {type(value).__name__}: {value!r}",
            field=field,
            value=value,
        )


def _check_limit(value: object, field: str) -> None:
    # bool is an int subclass; True as a limit is almost certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(
            f"{field} must be an int, got {type(value).__name__}: {value!r}",
            field=field,
            value=value,
        )
    if value < 0:
        raise SpecError(f"{field} must be >= 0, got {value!r}", field=field, value=value)
    if value > _MAX_LIMIT:
        raise SpecError(f"{field} must be <= 2**63-1, got {value!r}", field=field, value=value)


def _is_surrogate(c: str) -> bool:
    return "\ud800" <= c <= "\udfff"


def _normalize_host(entry: object) -> str:
    """Return ``entry`` as ``host:port`` (host lower-cased), or raise SpecError.

    Accepts ``"host:port"``, ``"[v6addr]:port"`` or a ``(host, port)`` pair.
    """
    field = "allowed_hosts"
    if isinstance(entry, tuple) and len(entry) == 2:
        host, port = entry
        if not isinstance(host, str):
            raise SpecError(
                f"allowed_hosts entry {entry!r}: host must be a str", field=field, value=entry
            )
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        port_value: object = port
    elif isinstance(entry, str):
        if entry.startswith("["):
            close = entry.find("]")
            if close < 0 or entry[close + 1 : close + 2] != ":":
                raise SpecError(
                    f"allowed_hosts entry {entry!r} must be '[addr]:port'", field=field, value=entry
                )
            host, port_text = entry[: close + 1], entry[close + 2 :]
        else:
            host, sep, port_text = entry.rpartition(":")
            if not sep:
                raise SpecError(
                    f"allowed_hosts entry {entry!r} must be 'host:port'", field=field, value=entry
                )
            if ":" in host:
                raise SpecError(
                    f"allowed_hosts entry {entry!r}: write IPv6 addresses as '[addr]:port'",
                    field=field,
                    value=entry,
                )
        # At most 5 digits: no port is longer, and int() refuses (with a
        # ValueError, not a SpecError) strings of thousands of digits.
        digits = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
        port_value = int(port_text) if digits else port_text
    else:
        raise SpecError(
            f"allowed_hosts entry {entry!r} must be a 'host:port' str or a (host, port) pair",
            field=field,
            value=entry,
        )
    # A surrogate is no character of any host name (and cannot be encoded).
    if host in ("", "[]") or any(c.isspace() or c in "\0/@" or _is_surrogate(c) for c in host):
        raise SpecError(
            f"allowed_hosts entry {entry!r}: invalid host {host!r}", field=field, value=entry
        )
    valid_port = isinstance(port_value, int) and not isinstance(port_value, bool)
    if not valid_port or not 1 <= cast(int, port_value) <= 65535:
        raise SpecError(
            f"allowed_hosts entry {entry!r}: port must be an int in 1..65535",
            field=field,
            value=entry,
        )
    return f"{host.lower()}:{port_value}"


@dataclass(frozen=True)
class NetworkPolicy:
    """What the action may reach over the network.

    ``is_hermetic`` means a private network namespace with only loopback;
    the other fields only mean something when it is False.  ``allowed_hosts``
    is normalised to sorted, unique, lower-cased ``host:port`` strings.

    With ``allowed_hosts`` the action keeps its private namespace and reaches
    exactly those endpoints through a proxy hermetic runs outside the
    sandbox (``allow_http``: plain HTTP requests; ``allow_https``: HTTP
    CONNECT tunnels; ``allow_dns``: the proxy resolves host names for it,
    else entries must be IP addresses).  ``host_network`` shares the host's
    network instead: not hermetic, and results say so.
    """

    is_hermetic: bool = True
    allow_http: bool = False
    allow_https: bool = False
    allow_dns: bool = False
    allowed_hosts: tuple[str, ...] = ()
    #: True: a new network namespace for every action (about +0.6 ms on
    #: Linux).  False: a pooled loopback-only namespace, never shared by two
    #: running actions (see hermetic/platforms/linux/netns.py for what a
    #: later action can still observe of an earlier one).
    fresh_namespace: bool = False
    #: The host's own network namespace: everything the host reaches.  Not
    #: hermetic (``ExecutionResult.hermetic`` is False); for actions that
    #: cannot work through a proxy.
    host_network: bool = False

    def __post_init__(self) -> None:
        for name in (
            "is_hermetic",
            "allow_http",
            "allow_https",
            "allow_dns",
            "fresh_namespace",
            "host_network",
        ):
            _check_bool(getattr(self, name), name)
        hosts: object = self.allowed_hosts
        if isinstance(hosts, (str, bytes)) or not isinstance(hosts, Iterable):
            raise SpecError(
                f"allowed_hosts must be a sequence of 'host:port' entries, got {hosts!r}",
                field="allowed_hosts",
                value=hosts,
            )
        object.__setattr__(
            self, "allowed_hosts", tuple(sorted({_normalize_host(h) for h in hosts}))
        )

    @classmethod
    def hermetic(cls) -> NetworkPolicy:
        """No network at all: the sandbox sees only its own loopback."""
        return cls()

    @classmethod
    def host(cls) -> NetworkPolicy:
        """The host's network, unrestricted.  Not hermetic."""
        return cls(is_hermetic=False, host_network=True)

    @property
    def uses_proxy(self) -> bool:
        """True when the action reaches ``allowed_hosts`` through the proxy."""
        return not self.is_hermetic and not self.host_network and bool(self.allowed_hosts)

    @classmethod
    def allow_hosts(cls, hosts: Iterable[str | tuple[str, int]]) -> NetworkPolicy:
        """HTTP and HTTPS to the listed ``host:port`` endpoints only, through
        hermetic's proxy, which also resolves their names."""
        entries = tuple(hosts) if not isinstance(hosts, str) else (hosts,)
        if not entries:
            # An empty allow-list would read as "no restriction" to some
            # enforcers; say "no network" explicitly instead.
            raise SpecError(
                "allow_hosts() needs at least one 'host:port'; "
                "use NetworkPolicy.hermetic() for no network",
                field="allowed_hosts",
                value=(),
            )
        return cls(
            is_hermetic=False,
            allow_http=True,
            allow_https=True,
            allow_dns=True,
            # __post_init__ normalises (host, port) pairs to "host:port".
            allowed_hosts=cast("tuple[str, ...]", entries),
        )


def _check_env_key(key: object) -> str:
    if not isinstance(key, str):
        raise SpecError(
            f"environment variable name must be a str, got {type(key).__name__}: {key!r}",
            field="vars",
            value=key,
        )
    if not key:
        raise SpecError("environment variable name must not be empty", field="vars", value=key)
    if "=" in key:
        raise SpecError(f"environment variable name {key!r} contains '='", field="vars", value=key)
    if "\0" in key:
        raise SpecError(
            f"environment variable name {key!r} contains a NUL byte", field="vars", value=key
        )
    check_encodable(key, f"environment variable name {key!r}", field="vars", show=False)
    return key


def _check_env_value(key: str, value: object) -> str:
    # Never put the value in the message or on the error: it may be a secret.
    if not isinstance(value, str):
        raise SpecError(
            f"environment variable {key!r}: value must be a str, got {type(value).__name__}",
            field="vars",
            value=key,
        )
    if "\0" in value:
        raise SpecError(
            f"environment variable {key!r}: value contains a NUL byte", field="vars", value=key
        )
    try:
        check_encodable(value, f"environment variable {key!r}: value", show=False)
    except SpecError as err:
        raise SpecError(str(err), field="vars", value=key) from None
    return value


def _env_pairs(source: object) -> tuple[tuple[str, str], ...]:
    items: Iterable[Any]
    if isinstance(source, Mapping):
        items = source.items()
    elif isinstance(source, (str, bytes)) or not isinstance(source, Iterable):
        raise SpecError(
            "vars must be a mapping or a sequence of (key, value) pairs, "
            f"got {type(source).__name__}",
            field="vars",
        )
    else:
        items = source
    result: dict[str, str] = {}
    for item in items:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise SpecError(
                f"vars entries must be (key, value) pairs, got {type(item).__name__}", field="vars"
            )
        key = _check_env_key(item[0])
        if key in result:
            raise SpecError(f"environment variable {key!r} is given twice", field="vars", value=key)
        result[key] = _check_env_value(key, item[1])
    return tuple(sorted(result.items()))


@dataclass(frozen=True)
class EnvSet:
    """The exact environment the action starts with.

    ``vars`` accepts a mapping or (key, value) pairs and is stored as pairs
    sorted by key.  ``inherit_path`` / ``inherit_home`` copy the host's PATH /
    HOME in addition (a var given in ``vars`` wins).
    """

    vars: tuple[tuple[str, str], ...] = ()
    inherit_path: bool = False
    inherit_home: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "vars", _env_pairs(self.vars))
        _check_bool(self.inherit_path, "inherit_path")
        _check_bool(self.inherit_home, "inherit_home")

    def __repr__(self) -> str:
        # Values may be secrets; keep them out of logs and tracebacks.
        keys = ", ".join(k for k, _ in self.vars)
        return (
            f"EnvSet(keys=[{keys}], inherit_path={self.inherit_path}, "
            f"inherit_home={self.inherit_home})"
        )

    @classmethod
    def of(
        cls,
        vars: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        *,
        inherit_path: bool = False,
        inherit_home: bool = False,
    ) -> EnvSet:
        """Typed constructor taking a mapping or (key, value) pairs in any order."""
        # __post_init__ normalises either form to sorted pairs.
        pairs = cast("tuple[tuple[str, str], ...]", vars)
        return cls(vars=pairs, inherit_path=inherit_path, inherit_home=inherit_home)

    @classmethod
    def minimal(cls) -> EnvSet:
        """A fixed, host-independent baseline: USER=builder, a UTF-8 C locale, TZ=UTC."""
        return cls(
            vars=(
                ("USER", "builder"),
                ("LANG", "C.UTF-8"),
                ("LC_ALL", "C.UTF-8"),
                ("TZ", "UTC"),
            )
        )

    def has(self, key: str) -> bool:
        return any(k == key for k, _ in self.vars)

    def get(self, key: str, default: str = "") -> str:
        for k, v in self.vars:
            if k == key:
                return v
        return default

    def with_var(self, key: str, value: str) -> EnvSet:
        """A copy with ``key`` set to ``value`` (replacing any previous value)."""
        merged = dict(self.vars)
        merged[_check_env_key(key)] = _check_env_value(key, value)
        return dataclasses.replace(self, vars=tuple(merged.items()))

    def without(self, key: str) -> EnvSet:
        """A copy without ``key`` (unchanged if it was not set)."""
        return dataclasses.replace(self, vars=tuple((k, v) for k, v in self.vars if k != key))

    def to_dict(self) -> dict[str, str]:
        return dict(self.vars)


@dataclass(frozen=True)
class ResourceLimits:
    """Upper bounds for the action.  Where noted, 0 means unlimited."""

    max_memory_bytes: int = 0  # 0 = unlimited
    max_cpu_time_ms: int = 0  # 0 = unlimited
    max_processes: int = 256
    max_file_size: int = _GiB
    cpu_shares: int = 1024
    max_disk_io: int = 0  # 0 = unlimited
    max_network_io: int = 0  # 0 = unlimited
    max_open_files: int = 1024
    max_output_bytes: int = 0  # 0 = unlimited
    #: Size of the sandbox's private /tmp, a tmpfs held in memory: a write
    #: beyond it gets ENOSPC, and the result records a violation.  Capped
    #: at max_memory_bytes when that is smaller, and its pages count as the
    #: sandbox's memory.  Never unlimited (a tmpfs's own default is half of
    #: the host's RAM).  Not used where /tmp is declared (a host directory)
    #: or without mount namespaces (Landlock-only: there is no private /tmp).
    max_tmp_bytes: int = 256 * _MiB
    #: False: a limit this host cannot enforce for the whole sandbox makes
    #: execution fail (closed).  True: such limits are applied as well as
    #: the host allows (per process, by sampling, or not at all), and each
    #: result lists them in ``unenforced_limits``.
    best_effort: bool = False
    #: The fields still holding the value of the :meth:`hermetic` preset
    #: because nobody chose them: each is enforced as well as the host
    #: allows (weakened ones listed in ``unenforced_limits``) instead of
    #: failing closed.  Limits constructed directly have none; a field of
    #: the preset given another value (``dataclasses.replace``) leaves this
    #: list, so a limit the caller set is a hard one.  A spec file without
    #: this list makes every limit it names hard, whatever the value.
    defaulted: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name == "best_effort":
                _check_bool(self.best_effort, "best_effort")
            elif f.name != "defaulted":
                _check_limit(getattr(self, f.name), f.name)
        names: object = self.defaulted
        if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
            raise SpecError(
                f"defaulted must be a sequence of limit names, got {names!r}",
                field="defaulted",
                value=names,
            )
        for name in names:
            if name not in _PRESET:
                raise SpecError(
                    f"defaulted: {name!r} is not a limit (expected one of {', '.join(_PRESET)})",
                    field="defaulted",
                    value=name,
                )
        # Only a value equal to the preset's is still a default: a field
        # replaced with another value became the caller's, and hard.
        object.__setattr__(
            self,
            "defaulted",
            tuple(sorted({n for n in names if getattr(self, n) == _PRESET[n]})),
        )
        if self.max_tmp_bytes == 0:
            raise SpecError(
                "max_tmp_bytes must be > 0: the private /tmp always has a size "
                "(declare /tmp as a temp to give the action a host directory instead)",
                field="max_tmp_bytes",
                value=self.max_tmp_bytes,
            )

    @classmethod
    def defaults(cls) -> ResourceLimits:
        """The field defaults: generous, mostly unlimited."""
        return cls()

    @classmethod
    def hermetic(cls) -> ResourceLimits:
        """Bounded everywhere, sized for a typical build or test action: the
        default of ``SandboxSpec`` and of the builders.

        Every value is a default (see ``defaulted``): a host that cannot
        enforce one for the whole sandbox (a normal user without cgroup
        delegation: memory and summed CPU time) applies it as well as it
        can and lists it in ``unenforced_limits`` rather than refusing to
        run.  A value set over the preset is the caller's and fails closed.
        """
        preset: dict[str, Any] = dict(_PRESET)
        return cls(**preset, defaulted=tuple(_PRESET))

    def is_default(self, name: str) -> bool:
        """Whether limit ``name`` holds the preset's value nobody chose
        (enforced as well as the host allows) rather than the caller's (hard)."""
        return name in self.defaulted


#: The values of ResourceLimits.hermetic(), one per limit field.
_PRESET: dict[str, int] = {
    "max_memory_bytes": 4 * _GiB,
    "max_cpu_time_ms": 3_600_000,
    "max_processes": 128,
    "max_file_size": _GiB,
    "cpu_shares": 1024,
    "max_disk_io": 10 * _GiB,
    "max_network_io": _GiB,
    "max_open_files": 512,
    "max_output_bytes": 100 * _MiB,
    "max_tmp_bytes": 256 * _MiB,
}


@dataclass(frozen=True)
class ProcessPolicy:
    """How the action may create processes and what happens to them.

    ``max_children`` (0, the default: no bound of its own) caps the tasks
    the action may have at once besides itself.  It is applied as the
    process limit, together with ``ResourceLimits.max_processes`` (the
    smaller of the two, the action counted), so like that limit it counts
    threads too: the kernel's counters (the pids controller,
    RLIMIT_NPROC) count tasks.  A sandbox always ends with its caller, so
    ``kill_on_parent_exit=False`` is refused (UnsupportedError) rather than
    ignored.
    """

    allow_fork: bool = True
    allow_exec: bool = True
    max_children: int = 0
    kill_on_parent_exit: bool = True

    def __post_init__(self) -> None:
        _check_bool(self.allow_fork, "allow_fork")
        _check_bool(self.allow_exec, "allow_exec")
        _check_limit(self.max_children, "max_children")
        _check_bool(self.kill_on_parent_exit, "kill_on_parent_exit")

    @classmethod
    def hermetic(cls) -> ProcessPolicy:
        """Nothing outlives the caller; processes are bounded by the
        resource limits (``ResourceLimits.hermetic()``: 128)."""
        return cls(kill_on_parent_exit=True)


@dataclass(frozen=True)
class ReproducibilityPolicy:
    """What keeps outputs from depending on when the action ran.

    Always fixed, whatever this says: the umask (022), the host and domain
    names, and the user name and locale of ``EnvSet.minimal()`` (with
    ``TZ=UTC``).  ``source_date_epoch`` sets ``SOURCE_DATE_EPOCH``, which
    compilers and archivers use instead of the current time
    (reproducible-builds.org).  ``fresh_clocks`` gives the action a time
    namespace whose ``CLOCK_MONOTONIC`` and ``CLOCK_BOOTTIME`` start near
    zero, so uptimes and monotonic stamps do not carry the host's; the
    kernel cannot virtualise the wall clock.
    """

    source_date_epoch: int | None = None
    fresh_clocks: bool = False

    def __post_init__(self) -> None:
        if self.source_date_epoch is not None:
            _check_limit(self.source_date_epoch, "source_date_epoch")
        _check_bool(self.fresh_clocks, "fresh_clocks")
