"""The spec the command line's options describe: a spec file, or the
default, changed by each option given."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

from hermetic.cli.files import _absolute, _read_spec
from hermetic.cli.output import _one_line
from hermetic.core.builders import HermeticSpecBuilder
from hermetic.core.errors import SpecError
from hermetic.core.paths import PathSet, canonical, is_within
from hermetic.core.policies import EnvSet, NetworkPolicy, ResourceLimits
from hermetic.core.spec import SandboxSpec


def _default_spec(toolchain: bool) -> SandboxSpec:
    """Without --spec: the toolchain read-only and the library's default
    limits (``ResourceLimits.hermetic()``), so the command line and
    ``SandboxSpec()`` run an action alike.  Those the host can only weaken
    (memory and CPU time for a normal user without a delegated cgroup) are
    said once on stderr and listed in the result; none fails the run."""
    spec = SandboxSpec()
    env = spec.environment.with_var("PATH", HermeticSpecBuilder.DEFAULT_PATH)
    inputs = PathSet(HermeticSpecBuilder.toolchain_inputs() if toolchain else ())
    return dataclasses.replace(spec, inputs=inputs, environment=env)


def _paths(spec_paths: PathSet, given: Sequence[str], option: str) -> PathSet:
    try:
        return spec_paths.union(PathSet(tuple(_absolute(p, option) for p in given)))
    except SpecError as err:
        raise SpecError(f"{option}: {err}", field=option, value=err.value) from None


def _limits_from_args(limits: ResourceLimits, ns: argparse.Namespace) -> ResourceLimits:
    """``limits`` with those the command line sets.  A limit given on the
    command line is the caller's, a hard one, even at the preset's value:
    it leaves ``defaulted`` (which would weaken it where the host cannot
    enforce it)."""
    given = {
        name: value
        for name, value in (
            ("max_memory_bytes", ns.memory),
            ("max_cpu_time_ms", ns.cpu_time),
            ("max_processes", ns.processes),
        )
        if value is not None
    }
    if not given and not ns.best_effort:
        return limits
    return dataclasses.replace(
        limits,
        **given,
        best_effort=limits.best_effort or ns.best_effort,
        defaulted=tuple(n for n in limits.defaulted if n not in given),
    )


def _network_from_args(network: NetworkPolicy, ns: argparse.Namespace) -> NetworkPolicy:
    """``network`` as --network and --allow-host change it: --network none
    (or loopback) replaces it with no network; --allow-host adds endpoints
    to what a spec file lists, or replaces a network without any (none, or
    the host's) with the proxy's, reaching those alone."""
    if ns.network is not None:
        return NetworkPolicy.hermetic()
    if not ns.allow_host:
        return network
    if network.uses_proxy:
        hosts = (*network.allowed_hosts, *ns.allow_host)
        return dataclasses.replace(network, allowed_hosts=hosts)
    return NetworkPolicy.allow_hosts(ns.allow_host)


def _passed_env(env: EnvSet, names: Sequence[str]) -> EnvSet:
    """``env`` with --env-pass's variables, as this process has them.

    A name not set here is skipped with a warning, as nsjail's ``--env
    NAME`` does (and Docker's ``-e NAME`` silently): passing a variable
    means the sandbox sees what the caller sees, and a build script that
    passes an optional one (``CC``, ``MAKEFLAGS``) must not fail where it
    is unset.  The warning names the variable, never a value."""
    for name in names:
        value = os.environ.get(name)
        if value is None:
            print(
                _one_line(f"hermetic: --env-pass {name}: not set here, so not set in the sandbox"),
                file=sys.stderr,
            )
            continue
        try:
            env = env.with_var(name, value)
        except SpecError as err:
            raise SpecError(f"--env-pass {name!r}: {err}", field="env", value=name) from None
    return env


def _spec_from_args(ns: argparse.Namespace) -> SandboxSpec:
    if ns.spec is not None:
        data = _read_spec(ns.spec)
        try:
            spec = SandboxSpec.from_json(data)
        except SpecError as err:
            raise SpecError(
                f"spec file {ns.spec!r}: {err}", field=err.field, value=err.value
            ) from None
    else:
        spec = _default_spec(not ns.no_toolchain)
    env = _passed_env(spec.environment, ns.env_pass)
    for item in ns.env:
        key, sep, value = item.partition("=")
        if not sep:
            raise SpecError(f"--env wants KEY=VALUE, got {key!r}", field="env", value=key)
        env = env.with_var(key, value)
    workdir = spec.workdir
    if ns.workdir is not None:
        workdir = canonical(_absolute(ns.workdir, "--workdir"), field="workdir")
    spec = dataclasses.replace(
        spec,
        inputs=_paths(spec.inputs, ns.input, "--input"),
        outputs=_paths(spec.outputs, ns.output, "--output"),
        temps=_paths(spec.temps, ns.temp, "--temp"),
        environment=env,
        workdir=workdir,
        resources=_limits_from_args(spec.resources, ns),
        network=_network_from_args(spec.network, ns),
    )
    if ns.workdir is not None:
        _check_workdir(spec, ns.workdir)
    if spec.workdir is None:
        # Like bubblewrap: keep the current directory when the sandbox shows
        # it (and when there is one: it may have been removed).
        try:
            here = canonical(os.getcwd())
        except (OSError, SpecError):
            return spec
        if any(is_within(here, p) for p in (*spec.inputs, *spec.outputs, *spec.temps)):
            spec = dataclasses.replace(spec, workdir=here)
    return spec


def _check_workdir(spec: SandboxSpec, given: str) -> None:
    """``--workdir`` must be a directory the action will see: an existing
    one within a declared path, an ancestor of one (the sandbox makes
    those), or the private /tmp.  Anywhere else the sandbox would make an
    empty directory there and the action would run in it, finding none of
    its files."""
    where = spec.workdir
    assert where is not None
    declared = (*spec.inputs, *spec.outputs, *spec.temps)
    if where == "/tmp" or any(is_within(p, where) for p in declared):
        return  # the private /tmp, a declared path, or an ancestor of one
    if any(is_within(where, p) for p in declared):
        if os.path.isdir(where):
            return
        raise SpecError(f"--workdir {given!r}: no such directory", field="workdir", value=given)
    raise SpecError(
        f"--workdir {given!r} is not within a declared input, output or temp, so the "
        "action would not see it (declare it, e.g. --input or --output)",
        field="workdir",
        value=given,
    )
