"""What the build tests and benchmarks share: Debian's sources, the builds."""
