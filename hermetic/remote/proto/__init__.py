"""Protocol messages and stubs generated from .proto files (see generate.py)."""
