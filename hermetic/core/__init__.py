"""The model: the spec, its builders and validation, results, errors, usage.

It imports nothing above it; the executor (hermetic/executor.py) runs it.
"""

from hermetic.core.builders import HermeticSpecBuilder, SandboxSpecBuilder
from hermetic.core.errors import (
    ActionFailedError,
    ExecutionTimeout,
    HermeticError,
    SandboxError,
    SpecError,
    UnsupportedError,
)
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
from hermetic.core.streams import Streams
from hermetic.core.usage import ResourceUsage

__all__ = [
    "ActionFailedError",
    "EnvSet",
    "Err",
    "ExecutionResult",
    "ExecutionTimeout",
    "HermeticError",
    "HermeticSpecBuilder",
    "NetworkPolicy",
    "Ok",
    "PathSet",
    "ProcessPolicy",
    "ReproducibilityPolicy",
    "ResourceLimits",
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
    "stage_inputs",
]
