"""Resource usage of executions."""

from hermetic.monitoring.usage import ResourceUsage

__all__ = ["ResourceUsage"]
