"""Atomic checkpoints: weights_only loading, corruption detection and fallback, RNG state round trip."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from common.checkpoint import (
    CheckpointManager,
    CorruptCheckpointError,
    load_verified,
    save_atomic,
    state_digest,
)
from common.seeding import rng_state, seed_everything, set_rng_state


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((4, 4), value)}, "epoch": int(value), "history": [{"loss": value}]}


def test_save_is_loadable_with_weights_only(tmp_path):
    path = save_atomic(_state(1.0), tmp_path / "last.pt")
    raw = torch.load(path, weights_only=True)
    assert torch.equal(raw["model"]["w"], torch.ones(4, 4))
    assert load_verified(path)["epoch"] == 1


def test_previous_checkpoint_is_kept(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save(_state(1.0))
    mgr.save(_state(2.0))
    assert load_verified(mgr.prev)["epoch"] == 1
    assert mgr.load()["epoch"] == 2
    assert not list(mgr.dir.glob(".*tmp*")), "temporary files left behind"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "bitflip"])
def test_damaged_last_falls_back_to_prev_and_is_moved_aside(tmp_path, damage, caplog):
    mgr = CheckpointManager(tmp_path)
    mgr.save(_state(1.0))
    mgr.save(_state(2.0))
    data = bytearray(mgr.last.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytearray(b"not a checkpoint" * 10)
    else:
        # flip one byte inside the tensor payload (4x4 float32 of 2.0 = bytes 00 00 00 40)
        idx = bytes(data).find(bytes(torch.full((4, 4), 2.0).numpy().tobytes()))
        assert idx >= 0
        data[idx + 3] ^= 0x01
    mgr.last.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError):
        load_verified(mgr.last)
    state = mgr.load()
    assert state is not None and state["epoch"] == 1
    assert "corrupt" in caplog.text or "damaged" in caplog.text or "cannot be read" in caplog.text
    assert list(mgr.dir.glob("last.pt.corrupt-*")), "the damaged file must be kept aside, not overwritten"


def test_no_checkpoint_returns_none(tmp_path):
    assert CheckpointManager(tmp_path).load() is None


def test_digest_sees_every_value():
    a = _state(1.0)
    b = _state(1.0)
    assert state_digest(a) == state_digest(b)
    b["history"][0]["loss"] = 1.0000001
    assert state_digest(a) != state_digest(b)
    c = _state(1.0)
    c["model"]["w"] = c["model"]["w"].double()
    assert state_digest(a) != state_digest(c)


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    seed_everything(123)
    save_atomic({"rng": rng_state()}, tmp_path / "last.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(3)  # move every generator on
    set_rng_state(load_verified(tmp_path / "last.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
