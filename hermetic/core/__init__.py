"""The spec, its builders and validation, the Result type, the executor."""

from hermetic.core.builders import HermeticSpecBuilder, SandboxSpecBuilder
from hermetic.core.errors import (
    ActionFailedError,
    ExecutionTimeout,
    HermeticError,
    SandboxError,
    SpecError,
    UnsupportedError,
)
from hermetic.core.executor import HermeticExecutor, run
from hermetic.core.outcome import ExecutionResult, Violation, ViolationKind
from hermetic.core.paths import PathSet
from hermetic.core.policies import (
    EnvSet,
    NetworkPolicy,
    ProcessPolicy,
    ReproducibilityPolicy,
    ResourceLimits,
)
from hermetic.core.result import Err, Ok, Result
from hermetic.core.spec import SandboxSpec
from hermetic.core.staging import stage_inputs

__all__ = [
    "ActionFailedError",
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
    "Result",
    "SandboxError",
    "SandboxSpec",
    "SandboxSpecBuilder",
    "SpecError",
    "UnsupportedError",
    "Violation",
    "ViolationKind",
    "run",
    "stage_inputs",
]
