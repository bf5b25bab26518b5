"""Monitors that aggregate the resource usage of executions, and per-OS readers.

``ResourceMonitor`` and ``create_monitor`` live in hermetic.monitoring.monitor
(re-exported from ``hermetic``); ResourceUsage, which results carry, is part of
the model (hermetic.core.usage).
"""
