"""Atomic file writes: a reader (another process, a resumed run, ``launch.collect``) never sees half a file.

Every file a run writes as a record (``results.json``, ``meta.json``, a phase's ``result.json``, ``decoupling.json``)
goes through these: the text is written to a hidden temporary file in the same folder, then ``os.replace``d onto
the target, which POSIX makes atomic.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["write_json_atomic", "write_text_atomic"]


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (temporary file + ``os.replace``); returns the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding=encoding)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any, *, sort_keys: bool = True) -> Path:
    """Write ``obj`` as indented JSON (one trailing newline) to ``path`` atomically; returns the path."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")
