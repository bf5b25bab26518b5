"""Step-by-step construction of a SandboxSpec, and presets for builds and tests.

Builders never raise for a bad spec: every problem, whether found while
constructing or while validating, comes back from ``build()`` (or a preset)
as ``Err(SpecError)`` naming the culprit.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, cast

from hermetic.core.errors import SpecError
from hermetic.core.paths import PathSet, StrPath, canonical, is_within
from hermetic.core.policies import EnvSet, NetworkPolicy, ProcessPolicy, ResourceLimits
from hermetic.core.result import Err, Result
from hermetic.core.spec import SandboxSpec

__all__ = ["HermeticSpecBuilder", "SandboxSpecBuilder"]


def _path_set(paths: tuple[StrPath, ...], name: str) -> PathSet:
    try:
        return PathSet(cast("tuple[str, ...]", paths))
    except SpecError as err:
        raise SpecError(f"{name}: {err}", field=name, value=err.value) from None


@dataclass(frozen=True)
class SandboxSpecBuilder:
    """An immutable builder: every method returns a new builder.

    A builder can therefore be shared and extended in different directions
    without one branch seeing the other's additions.  Arguments are checked
    in :meth:`build`, so a chain of calls never raises half-way.
    """

    _inputs: tuple[StrPath, ...] = ()
    _outputs: tuple[StrPath, ...] = ()
    _temps: tuple[StrPath, ...] = ()
    # Applied in order at build time, so a later env() wins.  Left out of
    # repr() because values may be secrets.
    _env_vars: tuple[tuple[str, str], ...] = dataclasses.field(
        default=EnvSet.minimal().vars, repr=False
    )
    _inherit_path: bool = False
    _inherit_home: bool = False
    _network: NetworkPolicy = dataclasses.field(default_factory=NetworkPolicy.hermetic)
    _resources: ResourceLimits = dataclasses.field(default_factory=ResourceLimits.hermetic)
    _process: ProcessPolicy = dataclasses.field(default_factory=ProcessPolicy.hermetic)
    _workdir: StrPath | None = None
    # A bad argument to a method, reported by build() (methods never raise).
    _error: SpecError | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def create(cls) -> SandboxSpecBuilder:
        """Start from the hermetic baseline: no paths, no network, minimal env."""
        return cls()

    def input(self, path: StrPath) -> SandboxSpecBuilder:
        """Add a read-only input (file or directory)."""
        return dataclasses.replace(self, _inputs=(*self._inputs, path))

    def output(self, path: StrPath) -> SandboxSpecBuilder:
        """Add a writable output that survives the action."""
        return dataclasses.replace(self, _outputs=(*self._outputs, path))

    def temp(self, path: StrPath) -> SandboxSpecBuilder:
        """Add a writable scratch location."""
        return dataclasses.replace(self, _temps=(*self._temps, path))

    def env(self, key: str, value: str) -> SandboxSpecBuilder:
        """Set an environment variable (replacing an earlier value)."""
        return dataclasses.replace(self, _env_vars=(*self._env_vars, (key, value)))

    def with_environment(self, environment: EnvSet) -> SandboxSpecBuilder:
        """Replace the whole environment."""
        if not isinstance(environment, EnvSet):
            return self._failed(
                SpecError(
                    f"environment must be an EnvSet, got {type(environment).__name__}",
                    field="environment",
                    value=environment,
                )
            )
        return dataclasses.replace(
            self,
            _env_vars=environment.vars,
            _inherit_path=environment.inherit_path,
            _inherit_home=environment.inherit_home,
        )

    def clear_environment(self) -> SandboxSpecBuilder:
        """Start the action with no environment variables at all."""
        return self.with_environment(EnvSet())

    def with_network(self, policy: NetworkPolicy) -> SandboxSpecBuilder:
        return dataclasses.replace(self, _network=policy)

    def with_resources(self, limits: ResourceLimits) -> SandboxSpecBuilder:
        """Replace the limits.  Without this call the spec has
        ``ResourceLimits.hermetic()``, whose values are defaults: where the
        host cannot enforce one for the whole sandbox (a normal user without
        a delegated cgroup) it is weakened and listed in
        ``unenforced_limits``.  Values set here (other than the preset's
        own, see ``ResourceLimits.defaulted``) are enforced or refused."""
        return dataclasses.replace(self, _resources=limits)

    def with_process(self, policy: ProcessPolicy) -> SandboxSpecBuilder:
        return dataclasses.replace(self, _process=policy)

    def workdir(self, path: StrPath) -> SandboxSpecBuilder:
        """Set the action's working directory (absolute, inside the sandbox)."""
        return dataclasses.replace(self, _workdir=path)

    def _failed(self, err: SpecError) -> SandboxSpecBuilder:
        # The first bad argument is the one build() reports.
        return self if self._error is not None else dataclasses.replace(self, _error=err)

    def build(self) -> Result[SandboxSpec]:
        """Construct and validate the spec; a SpecError comes back as ``Err``."""
        if self._error is not None:
            return Err(self._error)
        try:
            env: dict[str, str] = {}
            for key, value in self._env_vars:
                if not isinstance(key, str):
                    raise SpecError(
                        f"environment variable name must be a str, got {type(key).__name__}",
                        field="vars",
                        value=key,
                    )
                env[key] = value
            spec = SandboxSpec(
                inputs=_path_set(self._inputs, "inputs"),
                outputs=_path_set(self._outputs, "outputs"),
                temps=_path_set(self._temps, "temps"),
                network=self._network,
                environment=EnvSet(
                    vars=tuple(env.items()),
                    inherit_path=self._inherit_path,
                    inherit_home=self._inherit_home,
                ),
                resources=self._resources,
                process=self._process,
                # canonical() (in SandboxSpec) takes a PathLike and names
                # the field when the value is not a path at all.
                workdir=cast("str | None", self._workdir),
            )
        except SpecError as err:
            return Err(err)
        return spec.checked()


class HermeticSpecBuilder:
    """Ready-made specs for the two common kinds of action: builds and tests."""

    #: Host locations the toolchain lives in.  Those that exist are added as
    #: read-only inputs so gcc, cc, sh and coreutils work unchanged (Debian's
    #: ``cc`` is a symlink through /etc/alternatives, and the dynamic loader
    #: needs the ld.so cache and configuration).
    TOOLCHAIN_INPUTS: ClassVar[tuple[str, ...]] = (
        "/usr",
        "/bin",
        "/sbin",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/etc/alternatives",
        "/etc/ld.so.cache",
        "/etc/ld.so.conf",
        "/etc/ld.so.conf.d",
    )
    #: PATH inside the sandbox: fixed, so the host's PATH cannot leak in.
    DEFAULT_PATH: ClassVar[str] = "/usr/local/bin:/usr/bin:/bin"

    @classmethod
    def toolchain_inputs(cls) -> tuple[str, ...]:
        """The entries of :attr:`TOOLCHAIN_INPUTS` that exist on this host."""
        return tuple(p for p in cls.TOOLCHAIN_INPUTS if os.path.exists(p))

    @classmethod
    def _base(cls, temp: str) -> SandboxSpecBuilder:
        builder = SandboxSpecBuilder.create()
        for path in cls.toolchain_inputs():
            builder = builder.input(path)
        return builder.temp(temp).env("PATH", cls.DEFAULT_PATH).env("TMPDIR", temp)

    @classmethod
    def for_build(
        cls,
        workspace_root: StrPath,
        sources: Iterable[StrPath],
        output_dir: StrPath,
        temp_dir: StrPath,
    ) -> Result[SandboxSpec]:
        """A build action: declared sources read-only, one output and one temp dir.

        Relative paths (sources, output_dir, temp_dir) are taken relative to
        ``workspace_root``, which is also the working directory.  The
        workspace itself is not an input: undeclared files in it stay
        invisible, which is what makes the build hermetic.
        """
        try:
            root = canonical(workspace_root, field="workspace_root")
            single = isinstance(sources, (str, bytes, os.PathLike))
            if single or not isinstance(sources, Iterable):
                what = "a single path" if single else type(sources).__name__
                raise SpecError(
                    f"sources must be an iterable of paths, not {what}: {sources!r}",
                    field="sources",
                    value=sources,
                )
            inputs = [_in_workspace(root, s, "sources") for s in sources]
            output = _in_workspace(root, output_dir, "output_dir")
            temp = _in_workspace(root, temp_dir, "temp_dir")
        except SpecError as err:
            return Err(err)
        builder = cls._base(temp)
        for path in inputs:
            builder = builder.input(path)
        return builder.output(output).workdir(root).build()

    @classmethod
    def for_test(
        cls,
        workspace_root: StrPath,
        test_dir: StrPath,
        temp_dir: StrPath,
    ) -> Result[SandboxSpec]:
        """A test action: the whole workspace read-only, a temp dir to write in.

        ``test_dir`` (relative to ``workspace_root`` if not absolute) is the
        working directory and must lie inside the workspace; ``temp_dir``
        must lie outside it, since the workspace is read-only.
        """
        try:
            root = canonical(workspace_root, field="workspace_root")
            test = _in_workspace(root, test_dir, "test_dir")
            temp = _in_workspace(root, temp_dir, "temp_dir")
        except SpecError as err:
            return Err(err)
        if not is_within(test, root):
            return Err(
                SpecError(
                    f"test_dir {test!r} is not inside workspace_root {root!r}",
                    field="test_dir",
                    value=test,
                )
            )
        return cls._base(temp).input(root).workdir(test).build()


def _in_workspace(root: str, path: StrPath, field: str) -> str:
    """Canonical ``path``, taking a relative one relative to ``root``."""
    raw: object = os.fspath(path) if isinstance(path, os.PathLike) else path
    if isinstance(raw, str) and raw and not os.path.isabs(raw):
        raw = os.path.join(root, raw)
    return canonical(raw, field=field)
