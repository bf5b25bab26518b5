"""hermetic: run build actions hermetically.

An action sees only the inputs its spec declares (read-only), writes only its
outputs and temps, gets exactly the declared environment and no network.

    >>> import hermetic
    >>> spec = hermetic.HermeticSpecBuilder.for_build(
    ...     workspace_root="/ws", sources=["src"], output_dir="out", temp_dir="tmp").unwrap()
    >>> result = hermetic.run(["cc", "src/main.c", "-o", "out/main"], spec)
"""

from hermetic.core import (
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
    UnsupportedError,
    Violation,
    ViolationKind,
    stage_inputs,
)
from hermetic.executor import HermeticExecutor, run
from hermetic.monitoring.monitor import ResourceMonitor, create_monitor
from hermetic.platforms.capabilities import Capabilities

__version__ = "0.1.0"


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
    "UnsupportedError",
    "Violation",
    "ViolationKind",
    "capabilities",
    "create_monitor",
    "run",
    "stage_inputs",
    "__version__",
]
