"""Helpers of the build tests and benchmarks: Debian's sources, the builds."""
