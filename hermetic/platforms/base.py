"""The backend seam: what the executor calls on a per-OS backend, as types.

Every backend package (linux/, macos/, windows/, and the refusing
unsupported.py) provides ``BACKEND``, ``Prepared``, ``capabilities()``,
``prepare(spec)`` and ``execute(prepared, argv, ...)``; each one is a
``Backend`` over its own ``Prepared`` (checked statically in
hermetic/platforms/__init__.py, and by tests/test_platform_contract.py).
The rules every backend applies alike live here too: an action's
environment (``action_environment``) and which limits it cannot enforce
fail closed (``weakened_limits``, ``fit_rlimits``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

from hermetic.core.errors import UnsupportedError
from hermetic.core.outcome import ExecutionResult
from hermetic.core.policies import ResourceLimits
from hermetic.core.spec import SandboxSpec
from hermetic.platforms.capabilities import Capabilities


def action_environment(
    spec: SandboxSpec,
    prepared: Mapping[str, str],
    env: Mapping[str, str] | None,
    own: Iterable[str] = (),
) -> dict[str, str]:
    """The environment of one action given ``execute(..., env=env)``.

    ``prepared`` is what every action of the spec gets (the spec's
    environment and the backend's own variables).  ``env`` extends it: a
    name it gives replaces the spec's value, the spec's other variables
    stay.  The variables the sandbox sets itself win over ``env``: the
    backend's ``own`` (the egress proxy's, which are the only way out of
    the sandbox) and the reproducibility policy's SOURCE_DATE_EPOCH.
    ``env`` has been validated as an EnvSet's variables are.
    """
    if not env:
        return dict(prepared)
    merged = {**prepared, **env}
    pinned = set(own)
    if spec.reproducibility.source_date_epoch is not None:
        pinned.add("SOURCE_DATE_EPOCH")
    for name in pinned:
        if name in prepared:
            merged[name] = prepared[name]
    return merged


def weakened_limits(
    limits: ResourceLimits,
    weak: Iterable[tuple[str, str]],
    causes: Mapping[str, str] | None = None,
    cause: str = "not on this platform",
) -> tuple[str, ...]:
    """The one rule for limits a backend cannot enforce as asked on this host.

    ``weak`` pairs each such limit's name with how it is applied instead
    (``("max_memory_bytes", "sampled every 20 ms, not a hard limit")``).
    A limit the caller set fails closed: UnsupportedError naming every one
    (its ``limits``, and its ``cause``: each limit's from ``causes``, else
    ``cause``, in a few words), unless ``limits.best_effort``.  A limit
    still holding the preset's value (``ResourceLimits.defaulted``) runs
    weakened, so the default spec runs wherever the rest of it can.
    Returns the ``"name: how"`` lines each result lists in
    ``unenforced_limits``.
    """
    pairs = tuple(weak)
    lines = tuple(f"{name}: {how}" for name, how in pairs)
    refused = [
        (name, how) for name, how in pairs if not (limits.best_effort or limits.is_default(name))
    ]
    if refused:
        raise UnsupportedError(
            "resource limits",
            "; ".join(f"{name}: {how}" for name, how in refused)
            + ". Set ResourceLimits(best_effort=True) to run with these limits weakened,"
            " or lift them",
            limits=[name for name, _ in refused],
            # Each cause once (all the cgroup ones share theirs).
            cause="; ".join(dict.fromkeys((causes or {}).get(name, cause) for name, _ in refused)),
        )
    return lines


def fit_rlimits(
    limits: ResourceLimits,
    values: Sequence[tuple[int, int, int]],
    fields: Mapping[int, str],
) -> list[tuple[int, int, int]]:
    """``values`` (resource, soft, hard) as an unprivileged caller can give
    them: the action cannot raise a hard limit above this process's (that
    takes privilege), so every execution would fail.

    The same rule as :func:`weakened_limits`: a default (``fields`` names
    the limit each resource comes from) above this process's hard limit is
    lowered to it, which only tightens it; one the caller set fails closed.
    POSIX only.
    """
    import resource

    fitted = []
    for res, soft, hard in values:
        mine = resource.getrlimit(res)[1]
        if res in fields and mine != resource.RLIM_INFINITY and hard > mine:
            if limits.is_default(fields[res]):
                # The preset's value is above what this process holds: the
                # action gets this process's limit, which is lower, so the
                # limit only tightens.
                fitted.append((res, mine, mine))
                continue
            unit = " s of RLIMIT_CPU" if res == resource.RLIMIT_CPU else ""
            raise UnsupportedError(
                "resource limits",
                f"{fields[res]} needs a hard limit of {hard}{unit}, above this process's "
                f"({mine}); lower it or raise the caller's limit",
            )
        fitted.append((res, soft, hard))
    return fitted


class Cancel(Protocol):
    """Asked at each periodic check while an action runs (Linux: 20 to
    100 ms apart, docs/limits.md): once true, the sandbox ends.
    A ``threading.Event`` is one; so is anything with ``is_set()``."""

    def is_set(self) -> bool: ...


class Observer(Protocol):
    """Told the pid of an action's first process as it starts."""

    def started(self, pid: int) -> None: ...


class PreparedSpec(Protocol):
    """A spec a backend has prepared once, to run many actions under."""

    #: The environment every action gets (the spec's, plus what the
    #: backend adds, such as the egress proxy's variables); an action's
    #: ``env`` goes over it as ``action_environment`` says.
    env: dict[str, str]

    @property
    def unenforced_limits(self) -> tuple[str, ...]:
        """The default limits this host can only weaken, each with why
        (what every result's ``unenforced_limits`` holds)."""
        ...

    def close(self) -> None:
        """Release what the prepared spec holds; a later execute prepares again."""


P = TypeVar("P")


class Backend(Protocol[P]):
    """One operating system's backend, running actions under specs it prepared (``P``)."""

    @property
    def BACKEND(self) -> str: ...  # noqa: N802 (a module constant)

    def capabilities(self) -> Capabilities: ...

    def prepare(
        self,
        spec: SandboxSpec,
        *,
        remap: dict[str, str] | None = None,
        require_hermetic: bool = True,
        audit_writes: bool = True,
    ) -> P: ...

    def execute(
        self,
        prepared: P,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
        kill_grace: float = ...,
        observer: Observer | None = None,
        cancel: Cancel | None = None,
        profile: dict[str, float] | None = None,
        env: Mapping[str, str] | None = None,
        streams: tuple[int, int, int] | None = None,
        read_only: tuple[str, ...] = (),
    ) -> ExecutionResult: ...
