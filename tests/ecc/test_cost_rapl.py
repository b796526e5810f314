"""``energy_rapl`` on a powercap tree in the kernel's layout, whose counter the model itself advances.

No RAPL here (a VM without ``/sys/class/powercap``), so the files are written the way the kernel exposes them
(``intel-rapl:<n>/energy_uj`` and ``max_energy_range_uj``, decimal microjoules) and every forward pass adds a
known energy to the counter: the backend must return exactly that energy per pass, across a counter wrap and
summed over packages, and leave the thread count as it found it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ecc.cost import CostBackendUnavailable, RaplEnergy, make_backend

MAX_RANGE_UJ = 262_143_328_850  # a typical package's max_energy_range_uj


class CounterNet(nn.Module):
    """A linear layer whose forward adds ``uj`` microjoules to each zone's counter (wrapping as the kernel does)."""

    def __init__(self, zones: list[Path], uj: list[int]):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.zones, self.uj = zones, uj

    def forward(self, x):
        for zone, uj in zip(self.zones, self.uj):
            f = zone / "energy_uj"
            f.write_text(f"{(int(f.read_text()) + uj) % MAX_RANGE_UJ}\n")
        return self.fc(x)


def _zone(root: Path, n: int, start_uj: int) -> Path:
    zone = root / f"intel-rapl:{n}"
    zone.mkdir(parents=True)
    (zone / "name").write_text(f"package-{n}\n")
    (zone / "energy_uj").write_text(f"{start_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{MAX_RANGE_UJ}\n")
    # /sys/class/powercap lists the control type and the subzones (core, uncore) beside the packages:
    # neither may be counted (a subzone's energy is part of its package's)
    (root / "intel-rapl").mkdir(exist_ok=True)
    sub = root / f"intel-rapl:{n}:0"
    sub.mkdir()
    (sub / "energy_uj").write_text("0\n")
    (sub / "max_energy_range_uj").write_text(f"{MAX_RANGE_UJ}\n")
    return zone


def test_rapl_energy_per_forward_across_a_wrap_and_two_packages(tmp_path, monkeypatch):
    zones = [_zone(tmp_path, 0, MAX_RANGE_UJ - 2_500), _zone(tmp_path, 1, 10)]
    monkeypatch.setattr(RaplEnergy, "root", tmp_path)
    backend = make_backend("energy_rapl", min_window_s=0.05)
    assert backend.zones == zones
    threads = torch.get_num_threads()
    joules = backend.measure(CounterNet(zones, [700, 300]), torch.randn(1, 4))
    assert joules == pytest.approx(1000e-6, rel=1e-12)  # 700 + 300 µJ per pass; zone 0 wrapped on the way
    assert int((zones[0] / "energy_uj").read_text()) < MAX_RANGE_UJ - 2_500  # it did wrap
    assert torch.get_num_threads() == threads


def test_rapl_unreadable_counter_is_reported_in_one_line(tmp_path, monkeypatch):
    zone = _zone(tmp_path, 0, 0)
    # a read that fails with an OSError, as a root-only energy_uj does for a user (chmod would not stop root)
    (zone / "energy_uj").unlink()
    (zone / "energy_uj").mkdir()
    monkeypatch.setattr(RaplEnergy, "root", tmp_path)
    with pytest.raises(
        CostBackendUnavailable, match=r"^energy_rapl: energy_uj is root-only[^\n]*latency_cpu"
    ):
        make_backend("energy_rapl")
    monkeypatch.setattr(RaplEnergy, "root", tmp_path / "absent")
    with pytest.raises(CostBackendUnavailable, match=r"^energy_rapl: no RAPL zones[^\n]*latency_cpu"):
        make_backend("energy_rapl")
