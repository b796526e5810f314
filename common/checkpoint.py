"""Atomic checkpoints that detect their own corruption.

A checkpoint is a dict of tensors and primitives, saved with ``torch.save`` so that
``torch.load(path, weights_only=True)`` reads it. Writing goes to a temporary file that is fsynced and then
``os.replace``d over ``last.pt``; the checkpoint it replaces is kept as ``prev.pt``. A run killed at any moment
therefore leaves either the new or the previous checkpoint complete on disk.

Each checkpoint carries a content digest (``_digest``: BLAKE2b over every tensor's bytes and every primitive,
in key order). A file that fails to load or whose digest does not match is reported, moved aside (never
silently overwritten) and the previous good one is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_DIGEST_KEY = "_digest"


def _update_digest(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        # view as bytes: works for every dtype, bfloat16 included
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, Mapping):
        h.update(b"{")
        for key in sorted(obj, key=repr):
            if key == _DIGEST_KEY:
                continue
            h.update(repr(key).encode())
            _update_digest(h, obj[key])
        h.update(b"}")
    elif isinstance(obj, list | tuple):
        h.update(b"[" if isinstance(obj, list) else b"(")
        for item in obj:
            _update_digest(h, item)
        h.update(b"]")
    else:
        h.update(repr(obj).encode())


def state_digest(state: Mapping[str, Any]) -> str:
    """Digest of a checkpoint's content (ignores the stored digest itself)."""
    h = hashlib.blake2b(digest_size=16)
    _update_digest(h, state)
    return h.hexdigest()


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file could not be read or its content digest does not match."""


def save_atomic(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically; the file it replaces becomes ``prev.pt`` beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = dict(state)
    state["format"] = FORMAT_VERSION
    state[_DIGEST_KEY] = state_digest(state)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    if path.exists():
        os.replace(path, path.with_name("prev.pt"))
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_verified(path: str | os.PathLike) -> dict[str, Any]:
    """Load one checkpoint file and check its digest; raise :class:`CorruptCheckpointError` if bad."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, garbage bytes, unpickling refused
        raise CorruptCheckpointError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or _DIGEST_KEY not in state:
        raise CorruptCheckpointError(f"{path}: not a checkpoint of this project (no content digest)")
    if state_digest(state) != state[_DIGEST_KEY]:
        raise CorruptCheckpointError(f"{path}: content digest does not match (the file is damaged)")
    return state


class CheckpointManager:
    """The checkpoints of one run folder: ``<output_dir>/checkpoints/{last,prev}.pt``."""

    def __init__(self, output_dir: str | os.PathLike):
        self.dir = Path(output_dir) / "checkpoints"
        self.last = self.dir / "last.pt"
        self.prev = self.dir / "prev.pt"

    def exists(self) -> bool:
        return self.last.exists() or self.prev.exists()

    def save(self, state: dict[str, Any]) -> Path:
        return save_atomic(state, self.last)

    def load(self) -> dict[str, Any] | None:
        """The newest good checkpoint, or None when there is none.

        A damaged ``last.pt`` is reported, renamed to ``last.pt.corrupt-<time>`` and ``prev.pt`` is used.
        """
        for candidate in (self.last, self.prev):
            if not candidate.exists():
                continue
            try:
                return load_verified(candidate)
            except CorruptCheckpointError as exc:
                aside = candidate.with_name(f"{candidate.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
                with contextlib.suppress(FileNotFoundError):  # another rank of the job moved it first
                    os.replace(candidate, aside)
                log.error("%s; moved it to %s and falling back to the previous checkpoint", exc, aside.name)
        return None
