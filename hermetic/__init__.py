"""hermetic: run build actions hermetically.

An action sees only the inputs its spec declares (read-only), writes only its
outputs and temps, gets exactly the declared environment and no network.

    >>> import hermetic
    >>> spec = hermetic.HermeticSpecBuilder.for_build(
    ...     workspace_root="/ws", sources=["src"], output_dir="out", temp_dir="tmp").unwrap()
    >>> result = hermetic.run(["cc", "src/main.c", "-o", "out/main"], spec)
"""

import importlib.util as _importlib_util
import os as _os
from typing import Any as _Any

if _importlib_util.find_spec("hermetic._native") is None:
    # A source tree nobody built: say so, rather than the bare
    # "No module named 'hermetic._native'" of the first module that needs it.
    raise ImportError(
        "hermetic's C core (hermetic._native) is not built: this looks like a "
        f"source tree ({_os.path.dirname(__path__[0])}) that was never built.  "
        "Build it with `pip install -e .` in that directory (it needs a C "
        "compiler; pip installs cffi), or install the package with pip.",
        name="hermetic._native",
    )

from hermetic.core import (  # noqa: E402 (after the check above)
    ActionFailedError,
    EnvSet,
    Err,
    ExecutionResult,
    ExecutionTimeout,
    HermeticError,
    HermeticSpecBuilder,
    NetworkPolicy,
    Ok,
    PathSet,
    ProcessPolicy,
    ReproducibilityPolicy,
    ResourceLimits,
    ResourceUsage,
    Result,
    SandboxError,
    SandboxSpec,
    SandboxSpecBuilder,
    SpecError,
    Streams,
    UnsupportedError,
    Violation,
    ViolationKind,
    stage_inputs,
)
from hermetic.executor import HermeticExecutor, run  # noqa: E402
from hermetic.monitoring.monitor import ResourceMonitor, create_monitor  # noqa: E402
from hermetic.platforms.capabilities import Capabilities  # noqa: E402

del _importlib_util, _os

__version__ = "0.1.0"


def spec_schema() -> dict[str, _Any]:
    """The JSON Schema (draft 2020-12) of the spec file format, parsed.

    The format is the one ``SandboxSpec.from_json`` reads and ``to_json``
    writes (docs/spec.md); the file ships in the package as
    ``hermetic/schema/spec.schema.json``.  What the schema cannot express
    (duplicate keys, text no file name can hold, the consistency rules of
    ``SandboxSpec.validate()``) only the code checks.
    """
    import json
    from importlib.resources import files

    text = (files("hermetic") / "schema" / "spec.schema.json").read_text(encoding="utf-8")
    schema: dict[str, _Any] = json.loads(text)
    return schema


def capabilities() -> Capabilities:
    """What this host can enforce (namespaces, cgroups, seccomp, Landlock, pidfd, clone3)."""
    from hermetic.platforms import current

    result: Capabilities = current().capabilities()
    return result


__all__ = [
    "ActionFailedError",
    "Capabilities",
    "EnvSet",
    "Err",
    "ExecutionResult",
    "ExecutionTimeout",
    "HermeticError",
    "HermeticExecutor",
    "HermeticSpecBuilder",
    "NetworkPolicy",
    "Ok",
    "PathSet",
    "ProcessPolicy",
    "ReproducibilityPolicy",
    "ResourceLimits",
    "ResourceMonitor",
    "ResourceUsage",
    "Result",
    "SandboxError",
    "SandboxSpec",
    "SandboxSpecBuilder",
    "SpecError",
    "Streams",
    "UnsupportedError",
    "Violation",
    "ViolationKind",
    "capabilities",
    "create_monitor",
    "run",
    "spec_schema",
    "stage_inputs",
    "__version__",
]
