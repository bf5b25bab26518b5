"""JSON on stdout: a result, written a chunk at a time, or any object."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from typing import Any


def _write_json(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


_JSON_CHUNK = 3 << 16  # a multiple of 3: base64 chunks join without padding


def _write_json_result(result: Any, *, spec_digest: str) -> None:
    """``result.to_dict()`` as indented JSON on stdout, with stdout and
    stderr (and their base64 forms) encoded a chunk at a time.

    A stream holds up to the output cap, and its JSON form is up to six
    times larger (``\\u0000`` per zero byte): built whole, it made the
    command line hold gigabytes for a 100 MiB cap.  Here the caller holds
    the result and one chunk."""
    import base64
    import codecs
    import secrets

    token = secrets.token_hex(16)
    shallow = dataclasses.replace(result, stdout=b"", stderr=b"")
    data = shallow.to_dict()
    data["spec_digest"] = spec_digest
    data["error"] = None
    writers: dict[str, Any] = {}
    for name in ("stdout", "stderr"):
        raw: bytes = getattr(result, name)
        data[name] = f"{token}:{name}"
        writers[f"{token}:{name}"] = (_json_text_chunks, raw)
        try:
            codecs.decode(raw, "utf-8")
        except UnicodeDecodeError:
            data[f"{name}_base64"] = f"{token}:{name}_base64"
            writers[f"{token}:{name}_base64"] = (_base64_chunks, raw)
    text = json.dumps(data, indent=2)
    out = sys.stdout
    rest = text
    while True:
        cut = rest.find(f'"{token}:')
        if cut < 0:
            break
        end = rest.index('"', cut + 1)
        out.write(rest[:cut])
        encode, raw = writers[rest[cut + 1 : end]]
        out.write('"')
        for piece in encode(raw, base64):
            out.write(piece)
        out.write('"')
        rest = rest[end + 1 :]
    out.write(rest + "\n")
    out.flush()


def _json_text_chunks(raw: bytes, _b64: Any) -> Iterator[str]:
    """The JSON string body of ``raw`` decoded as UTF-8 (bad bytes
    replaced, as ``to_dict`` does), a chunk at a time."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    for start in range(0, len(raw), _JSON_CHUNK):
        piece = decoder.decode(raw[start : start + _JSON_CHUNK])
        if piece:
            yield json.dumps(piece)[1:-1]
    tail = decoder.decode(b"", final=True)
    if tail:
        yield json.dumps(tail)[1:-1]


def _base64_chunks(raw: bytes, b64: Any) -> Iterator[str]:
    for start in range(0, len(raw), _JSON_CHUNK):
        yield b64.b64encode(raw[start : start + _JSON_CHUNK]).decode("ascii")
