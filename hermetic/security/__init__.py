"""Timeout enforcement (and, as they land, seccomp policy, network policy, audit)."""
