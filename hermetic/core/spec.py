"""SandboxSpec: everything an action may see and do, in one immutable value.

The model: declared inputs are visible read-only, outputs and temps are
writable, nothing else of the host filesystem exists.  Network, environment,
resources and process creation are each governed by their policy object.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hermetic.core.errors import SpecError
from hermetic.core.paths import (
    PathSet,
    StrPath,
    canonical,
    check_encodable,
    escape_surrogates,
    is_within,
)
from hermetic.core.policies import (
    EnvSet,
    NetworkPolicy,
    ProcessPolicy,
    ReproducibilityPolicy,
    ResourceLimits,
)
from hermetic.core.result import Err, Ok, Result

__all__ = [
    "MAX_READ_ONLY_PATHS",
    "SPEC_VERSION",
    "SandboxSpec",
    "check_argv",
    "check_cwd",
    "check_read_only",
    "process_limit",
]

#: 2: ProcessPolicy.max_children is enforced (version 1 files said 32 by
#: default and nothing applied it; they are read with it unset).
SPEC_VERSION = 2
#: The versions from_dict reads.
_READABLE_VERSIONS = (1, 2)

_PATH_FIELDS = ("inputs", "outputs", "temps")
_TOP_KEYS = frozenset(
    {
        "version",
        *_PATH_FIELDS,
        "network",
        "environment",
        "resources",
        "process",
        "reproducibility",
        "workdir",
    }
)
_ENV_KEYS = frozenset({"vars", "inherit_path", "inherit_home"})


def _nested(err: SpecError, prefix: str) -> SpecError:
    """Re-raise a sub-object's error with the key path it sits at."""
    message = str(err)
    if err.field and message.startswith(err.field):
        return SpecError(f"{prefix}.{message}", field=f"{prefix}.{err.field}", value=err.value)
    where = f"{prefix}.{err.field}" if err.field else prefix
    return SpecError(f"{prefix}: {message}", field=where, value=err.value)


def _as_pathset(value: object, name: str) -> PathSet:
    if isinstance(value, PathSet):
        return value
    if isinstance(value, (str, bytes, os.PathLike)) or not isinstance(value, Iterable):
        raise SpecError(
            f"{name} must be a PathSet or a list of paths, got {type(value).__name__}: {value!r}",
            field=name,
            value=value,
        )
    try:
        return PathSet(tuple(value))
    except SpecError as err:
        raise _nested(err, name) from None


def _require_type(value: object, expected: type, name: str) -> None:
    if not isinstance(value, expected):
        raise SpecError(
            f"{name} must be a {expected.__name__}, got {type(value).__name__}",
            field=name,
            value=value,
        )


def _innermost(path: str, declared: Iterable[str]) -> str | None:
    """The deepest of ``declared`` that contains ``path``, or None."""
    best: str | None = None
    for p in declared:
        if is_within(path, p) and (best is None or len(p) > len(best)):
            best = p
    return best


@dataclass(frozen=True)
class SandboxSpec:
    """The complete, declarative description of one sandbox.

    Construction canonicalises paths and type-checks every field; whether
    the parts are consistent (no input/output overlap, inputs exist, ...) is
    checked by :meth:`validate`, which builders and the executor call.
    ``workdir`` is the action's working directory (None means ``/``).
    """

    inputs: PathSet = field(default_factory=PathSet)
    outputs: PathSet = field(default_factory=PathSet)
    temps: PathSet = field(default_factory=PathSet)
    network: NetworkPolicy = field(default_factory=NetworkPolicy.hermetic)
    environment: EnvSet = field(default_factory=EnvSet.minimal)
    resources: ResourceLimits = field(default_factory=ResourceLimits.hermetic)
    process: ProcessPolicy = field(default_factory=ProcessPolicy.hermetic)
    workdir: str | None = None
    reproducibility: ReproducibilityPolicy = field(default_factory=ReproducibilityPolicy)

    def __post_init__(self) -> None:
        for name in _PATH_FIELDS:
            object.__setattr__(self, name, _as_pathset(getattr(self, name), name))
        env: object = self.environment
        if isinstance(env, Mapping):
            try:
                object.__setattr__(self, "environment", EnvSet(vars=tuple(env.items())))
            except SpecError as err:
                raise _nested(err, "environment") from None
        _require_type(self.environment, EnvSet, "environment")
        _require_type(self.network, NetworkPolicy, "network")
        _require_type(self.resources, ResourceLimits, "resources")
        _require_type(self.process, ProcessPolicy, "process")
        _require_type(self.reproducibility, ReproducibilityPolicy, "reproducibility")
        if self.workdir is not None:
            object.__setattr__(self, "workdir", canonical(self.workdir, field="workdir"))

    # -- consistency ---------------------------------------------------------

    def validate(self) -> None:
        """Raise :class:`SpecError` unless the spec is consistent and its inputs exist.

        Outputs and temps need not exist yet; outputs may overlap temps.
        Declarations may nest, the innermost one deciding for its subtree
        (see :meth:`can_write`); one path declared both read-only and
        writable is refused.
        """
        if self.workdir is not None and ("\0" in self.workdir or not os.path.isabs(self.workdir)):
            raise SpecError(
                f"workdir must be an absolute path without NUL bytes: {self.workdir!r}",
                field="workdir",
                value=self.workdir,
            )
        net = self.network
        if net.is_hermetic:
            granted = [
                n
                for n in ("allow_http", "allow_https", "allow_dns", "host_network")
                if getattr(net, n)
            ]
            if net.allowed_hosts:
                granted.append("allowed_hosts=" + ",".join(net.allowed_hosts))
            if granted:
                raise SpecError(
                    "network policy is hermetic (is_hermetic=True) but also grants "
                    + ", ".join(granted)
                    + "; use NetworkPolicy.hermetic() or set is_hermetic=False",
                    field="network",
                    value=net,
                )
        else:
            if net.host_network and net.allowed_hosts:
                raise SpecError(
                    "network policy shares the host network (host_network=True) but also lists "
                    "allowed_hosts; a host network cannot be narrowed: use one or the other",
                    field="network",
                    value=net,
                )
            if net.host_network and net.fresh_namespace:
                raise SpecError(
                    "network policy shares the host network but asks for a fresh namespace",
                    field="network",
                    value=net,
                )
            if not net.host_network and not net.allowed_hosts:
                raise SpecError(
                    "network policy is not hermetic but allows nothing: list allowed_hosts "
                    "(NetworkPolicy.allow_hosts), share the host network "
                    "(NetworkPolicy.host()) or use NetworkPolicy.hermetic()",
                    field="network",
                    value=net,
                )
            if not net.host_network and not (net.allow_http or net.allow_https):
                raise SpecError(
                    "allowed_hosts are reached through an HTTP proxy: set allow_http "
                    "and/or allow_https",
                    field="network",
                    value=net,
                )
        epoch = self.reproducibility.source_date_epoch
        if (
            epoch is not None
            and self.environment.has("SOURCE_DATE_EPOCH")
            and self.environment.get("SOURCE_DATE_EPOCH") != str(epoch)
        ):
            raise SpecError(
                "SOURCE_DATE_EPOCH is set in the environment and, differently, by "
                "reproducibility.source_date_epoch: set it in one place",
                field="reproducibility.source_date_epoch",
                value=epoch,
            )
        # Nesting is allowed, the inner declaration winning for its subtree
        # (a build directory in a read-only source tree; read-only inputs in
        # a writable exec root); one path declared both ways is not.
        for kind, writable in (("output", self.outputs), ("temp", self.temps)):
            same = set(writable.paths)
            for path in self.inputs:
                if path in same:
                    raise SpecError(
                        f"{path!r} is declared both an input (read-only) and {kind} "
                        f"(writable); declare it once, or nest one inside the other",
                        field=f"{kind}s",
                        value=path,
                    )
        for path in self.inputs:
            try:
                os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                raise SpecError(
                    f"input path does not exist: {path!r}", field="inputs", value=path
                ) from None
            except OSError as exc:
                raise SpecError(
                    f"input path cannot be accessed: {path!r} ({exc.strerror})",
                    field="inputs",
                    value=path,
                ) from None

    def checked(self) -> Result[SandboxSpec]:
        """``Ok(self)`` if :meth:`validate` passes, else ``Err(SpecError)``."""
        try:
            self.validate()
        except SpecError as err:
            return Err(err)
        return Ok(self)

    # -- questions -----------------------------------------------------------

    def can_read(self, path: StrPath) -> bool:
        """True when ``path`` is visible inside the sandbox (input, output or temp)."""
        target = canonical(path)
        return any(s.contains(target) for s in (self.inputs, self.outputs, self.temps))

    def can_write(self, path: StrPath) -> bool:
        """True when ``path`` is writable inside the sandbox: its innermost
        declaration is an output or a temp (an input declared inside an
        output stays read-only, an output inside an input is writable)."""
        target = canonical(path)
        writable = _innermost(target, (*self.outputs, *self.temps))
        if writable is None:
            return False
        read_only = _innermost(target, self.inputs)
        return read_only is None or len(writable) > len(read_only)

    def inputs_within_writable(self) -> tuple[str, ...]:
        """The inputs that lie inside an output or temp (read-only islands in
        a writable tree): what walks over the outputs on the host must leave
        alone, since they are the caller's files, not the action's."""
        writable = PathSet((*self.outputs, *self.temps))
        return tuple(
            sorted(
                {
                    mine
                    for mine, theirs in self.inputs.overlaps(writable)
                    if mine != theirs and is_within(mine, theirs)
                }
            )
        )

    def action_environment(self) -> dict[str, str]:
        """The variables the action starts with: ``environment``'s, the
        caller's PATH and HOME when it asks to inherit them, and
        SOURCE_DATE_EPOCH from ``reproducibility``."""
        env = self.environment.to_dict()
        if self.environment.inherit_path and "PATH" in os.environ:
            env["PATH"] = os.environ["PATH"]
        if self.environment.inherit_home and "HOME" in os.environ:
            env["HOME"] = os.environ["HOME"]
        if self.reproducibility.source_date_epoch is not None:
            env["SOURCE_DATE_EPOCH"] = str(self.reproducibility.source_date_epoch)
        return env

    def can_network(self) -> bool:
        return not self.network.is_hermetic

    def has_env(self, key: str) -> bool:
        return self.environment.has(key)

    # -- serialisation -------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict holding every field (see :meth:`from_dict`)."""
        net = self.network
        env = self.environment
        return {
            "version": SPEC_VERSION,
            "inputs": list(self.inputs.paths),
            "outputs": list(self.outputs.paths),
            "temps": list(self.temps.paths),
            "network": {
                "is_hermetic": net.is_hermetic,
                "allow_http": net.allow_http,
                "allow_https": net.allow_https,
                "allow_dns": net.allow_dns,
                "allowed_hosts": list(net.allowed_hosts),
                "fresh_namespace": net.fresh_namespace,
                "host_network": net.host_network,
            },
            "environment": {
                "vars": env.to_dict(),
                "inherit_path": env.inherit_path,
                "inherit_home": env.inherit_home,
            },
            "resources": dataclasses.asdict(self.resources),
            "process": dataclasses.asdict(self.process),
            "reproducibility": dataclasses.asdict(self.reproducibility),
            "workdir": self.workdir,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SandboxSpec:
        """Build a spec from the :meth:`to_dict` format.

        Strict about what is present (unknown keys and wrong types are
        errors naming the key path) and lenient about what is absent: a
        missing key, section or section entry takes the value of a default
        ``SandboxSpec()``.  ``environment.vars``, when given, replaces the
        default variables as a whole.  Version 1 documents are read too,
        their ``process.max_children`` as unset (version 1 did not apply
        it).
        """
        _check_keys(data, _TOP_KEYS, "")
        version = data.get("version", SPEC_VERSION)
        if isinstance(version, bool) or version not in _READABLE_VERSIONS:
            raise SpecError(
                f"version: unsupported spec version {version!r} (expected "
                f"{' or '.join(map(str, _READABLE_VERSIONS))})",
                field="version",
                value=version,
            )
        if version == 1 and isinstance(data.get("process"), Mapping):
            # Version 1 never applied max_children (its default said 32):
            # read as unset, so a saved spec runs as it did; a value no
            # version allows is still refused (as the JSON Schema does).
            if "max_children" in data["process"]:
                _section(
                    ProcessPolicy(), {"max_children": data["process"]["max_children"]}, "process"
                )
            data = {**data, "process": {**data["process"], "max_children": 0}}
        base = cls()
        kwargs: dict[str, Any] = {}
        for name in _PATH_FIELDS:
            if name in data:
                kwargs[name] = _as_pathset(_str_list(data[name], name), name)
        for name in ("network", "resources", "process", "reproducibility"):
            if name in data:
                kwargs[name] = _section(getattr(base, name), data[name], name)
        limits = kwargs.get("resources")
        if limits is not None and "defaulted" not in data["resources"]:
            # A file that does not say which limits are defaults: every limit
            # it names is the caller's, and hard, whatever its value (a
            # value equal to the preset's must not make it a default).
            named = set(data["resources"])
            kwargs["resources"] = dataclasses.replace(
                limits, defaulted=tuple(n for n in limits.defaulted if n not in named)
            )
        if "environment" in data:
            kwargs["environment"] = _environment(base.environment, data["environment"])
        if "workdir" in data:
            workdir = data["workdir"]
            if workdir is not None and not isinstance(workdir, str):
                raise SpecError(
                    f"workdir: expected a string or null, got {_json_type(workdir)}",
                    field="workdir",
                    value=workdir,
                )
            kwargs["workdir"] = workdir
        return cls(**kwargs)

    def to_json(self, *, indent: int | None = 2) -> str:
        """The spec as JSON text; :meth:`from_json` reads it back unchanged.

        The text always encodes as UTF-8: a file name made of undecodable
        bytes (surrogate-escaped by ``os.fsdecode``) is written as a
        ``\\udcXX`` escape, which reads back as the same name.
        """
        return escape_surrogates(json.dumps(self.to_dict(), indent=indent, ensure_ascii=False))

    @classmethod
    def from_json(cls, text: str | bytes) -> SandboxSpec:
        """Parse JSON text (``str`` or UTF-8/16/32 ``bytes``); see :meth:`from_dict`.

        Any bad document, however malformed or deep, is a SpecError.
        """
        if not isinstance(text, (str, bytes, bytearray)):
            raise SpecError(
                f"spec JSON must be str or bytes, got {type(text).__name__}", field="spec"
            )
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicates)
        except RecursionError:
            # The decoder recurses per level; no spec nests more than 3 deep.
            raise SpecError("malformed spec JSON: nested too deeply") from None
        except (ValueError, TypeError) as exc:
            # JSONDecodeError and UnicodeDecodeError are both ValueErrors;
            # our own duplicate-key SpecError is one too and passes through.
            if isinstance(exc, SpecError):
                raise
            raise SpecError(f"malformed spec JSON: {exc}") from None
        if not isinstance(data, dict):
            raise SpecError(f"spec JSON must be an object, got {_json_type(data)}")
        return cls.from_dict(data)

    def digest(self) -> str:
        """SHA-256 (hex) of the canonical serialisation.

        Equal specs give equal digests in any process: the text is built
        with sorted keys and fixed separators, never from hash order.
        """
        import hashlib  # (loads OpenSSL: only when hashing)

        data = self.to_dict()
        if not data["resources"]["defaulted"]:
            # Limits that are all the caller's hash as before that field existed.
            del data["resources"]["defaulted"]
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        # surrogatepass keeps undecodable file names (surrogate-escaped by
        # os.fsdecode) hashable and distinct instead of raising.
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def process_limit(spec: SandboxSpec) -> str:
    """The process limit as a message names it: the field it comes from
    (``process.max_children`` is applied as max_children + 1 processes)."""
    n, children = spec.resources.max_processes, spec.process.max_children
    if children and n == children + 1:
        return f"process.max_children={children} (max_processes={n})"
    return f"max_processes={n}"


def check_argv(argv: object) -> tuple[str, ...]:
    """``argv`` as a tuple of str, or SpecError naming the bad entry (``argv[i]``)."""
    if isinstance(argv, (str, bytes)) or not isinstance(argv, Iterable):
        raise SpecError(
            f"argv must be a non-empty sequence of strings, got {type(argv).__name__}",
            field="argv",
            value=argv,
        )
    out = []
    for i, a in enumerate(argv):
        where = f"argv[{i}]"
        if not isinstance(a, str):
            raise SpecError(
                f"{where} must be a str, got {type(a).__name__}: {a!r}", field=where, value=a
            )
        if "\0" in a:
            raise SpecError(f"{where} contains a NUL byte: {a!r}", field=where, value=a)
        check_encodable(a, where, field=where)
        out.append(a)
    if not out:
        raise SpecError("argv must be a non-empty sequence of strings", field="argv", value=argv)
    if not out[0]:
        # subprocess refuses it too; exec would search PATH for "".
        raise SpecError("argv[0] (the command) is empty", field="argv", value=argv)
    return tuple(out)


def check_cwd(cwd: object) -> str | None:
    """``cwd`` (an action's working directory, None for the spec's) as given,
    or SpecError naming it: it must be an absolute ``str`` path without NUL
    bytes that can be encoded as a file name."""
    if cwd is None:
        return None
    if isinstance(cwd, os.PathLike):
        try:
            cwd = os.fspath(cwd)
        except TypeError as exc:  # __fspath__ returned neither str nor bytes
            raise SpecError(f"cwd: {exc}", field="cwd", value=cwd) from None
    if not isinstance(cwd, str):
        raise SpecError(
            f"cwd must be a str path, got {type(cwd).__name__}: {cwd!r}", field="cwd", value=cwd
        )
    if "\0" in cwd or not cwd.startswith("/"):
        raise SpecError(
            f"cwd must be an absolute path without NUL bytes: {cwd!r}", field="cwd", value=cwd
        )
    check_encodable(cwd, "cwd", field="cwd")
    return cwd


#: Paths one execution may make read-only (``execute(read_only=...)``):
#: each is a bind mount in the action's mount namespace, whose cost grows
#: with their number, and the kernel's fs.mount-max caps them anyway.
MAX_READ_ONLY_PATHS = 4096


def check_read_only(paths: object, spec: SandboxSpec) -> tuple[str, ...]:
    """``paths`` (an execution's read-only islands in its writable
    directories) sorted and without repeats, or SpecError naming the bad
    one: each must be an absolute, normalised ``str`` path without NUL
    bytes, at or below one of the spec's outputs or temps (inputs anywhere
    else are the spec's to declare)."""
    if paths is None or (type(paths) in (tuple, list) and not paths):
        return ()
    if isinstance(paths, (str, bytes)) or not isinstance(paths, Iterable):
        raise SpecError(
            f"read_only must be a sequence of paths, got {type(paths).__name__}: {paths!r}",
            field="read_only",
            value=paths,
        )
    writable = (*spec.outputs, *spec.temps)
    found: set[str] = set()
    for p in paths:
        if isinstance(p, os.PathLike):
            p = os.fspath(p)
        if not isinstance(p, str) or "\0" in p or not p.startswith("/"):
            raise SpecError(
                f"read_only: {p!r} must be an absolute str path without NUL bytes",
                field="read_only",
                value=p,
            )
        check_encodable(p, "read_only", field="read_only")
        if os.path.normpath(p) != p or p.startswith("//"):
            raise SpecError(
                f"read_only: {p!r} is not a normalised path (no '.', '..', '//' or trailing '/')",
                field="read_only",
                value=p,
            )
        if not any(is_within(p, w) for w in writable):
            raise SpecError(
                f"read_only: {p!r} lies in no output or temp of the spec (an input "
                "elsewhere is declared in the spec's inputs)",
                field="read_only",
                value=p,
            )
        found.add(p)
        if len(found) > MAX_READ_ONLY_PATHS:
            raise SpecError(
                f"read_only: more than {MAX_READ_ONLY_PATHS} paths (each is a mount)",
                field="read_only",
                value=len(found),
            )
    return tuple(sorted(found))


# -- parsing helpers ---------------------------------------------------------


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads silently keeps the last duplicate; in a security spec an
    # ambiguous document must be rejected instead.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise SpecError(f"duplicate key {key!r} in spec JSON", field=key)
        result[key] = value
    return result


def _check_keys(data: object, allowed: frozenset[str], where: str) -> None:
    if not isinstance(data, Mapping):
        label = where or "spec"
        raise SpecError(
            f"{label}: expected an object, got {_json_type(data)}", field=where or None, value=data
        )
    for key in data:
        if key not in allowed:
            path = f"{where}.{key}" if where else str(key)
            raise SpecError(
                f"unknown key {path!r} (expected one of: {', '.join(sorted(allowed))})",
                field=path,
                value=key,
            )


def _str_list(value: object, where: str) -> list[str]:
    if not isinstance(value, (list, tuple)):
        raise SpecError(
            f"{where}: expected an array of strings, got {_json_type(value)}",
            field=where,
            value=value,
        )
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise SpecError(
                f"{where}[{i}]: expected a string, got {_json_type(item)}",
                field=f"{where}[{i}]",
                value=item,
            )
    return list(value)


def _section(default: Any, data: object, where: str) -> Any:
    """Override the fields of a policy dataclass ``default`` from ``data``."""
    names = {f.name for f in dataclasses.fields(default)}
    _check_keys(data, frozenset(names), where)
    assert isinstance(data, Mapping)
    changes: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}"
        current = getattr(default, key)
        # The default value's type is the field's type (bool, int or tuple of str).
        if isinstance(current, bool):
            if not isinstance(value, bool):
                raise SpecError(
                    f"{path}: expected a boolean, got {_json_type(value)}", field=path, value=value
                )
        elif isinstance(current, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise SpecError(
                    f"{path}: expected an integer, got {_json_type(value)}", field=path, value=value
                )
        elif isinstance(current, tuple):
            value = tuple(_str_list(value, path))
        changes[key] = value
    try:
        return dataclasses.replace(default, **changes)
    except SpecError as err:
        raise _nested(err, where) from None


def _environment(default: EnvSet, data: object) -> EnvSet:
    where = "environment"
    _check_keys(data, _ENV_KEYS, where)
    assert isinstance(data, Mapping)
    changes: dict[str, Any] = {}
    for key in ("inherit_path", "inherit_home"):
        if key in data:
            if not isinstance(data[key], bool):
                raise SpecError(
                    f"{where}.{key}: expected a boolean, got {_json_type(data[key])}",
                    field=f"{where}.{key}",
                    value=data[key],
                )
            changes[key] = data[key]
    if "vars" in data:
        raw = data["vars"]
        if not isinstance(raw, Mapping):
            raise SpecError(
                f"{where}.vars: expected an object, got {_json_type(raw)}", field=f"{where}.vars"
            )
        for key, value in raw.items():
            if not isinstance(value, str):
                # Name the key only: values may be secrets.
                raise SpecError(
                    f"{where}.vars.{key}: expected a string, got {_json_type(value)}",
                    field=f"{where}.vars.{key}",
                )
        changes["vars"] = tuple(raw.items())
    try:
        return dataclasses.replace(default, **changes)
    except SpecError as err:
        raise _nested(err, where) from None
