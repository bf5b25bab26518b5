"""Resource usage of executions, and monitors that aggregate it.

``ResourceMonitor`` and ``create_monitor`` live in hermetic.monitoring.monitor
(re-exported from ``hermetic``); this package's own namespace stays free of
them so that the core can import ResourceUsage without a cycle.
"""

from hermetic.monitoring.usage import ResourceUsage

__all__ = ["ResourceUsage"]
