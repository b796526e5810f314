"""GPU truth (issue 14): every figure of the issue's measured table, side by side, in one run of at most 7 minutes.

    python -m bench.gpu                            # on one CUDA GPU (make bench-gpu)
    python -m bench.gpu --out gpu.json             # the table also as JSON
    python -m bench.gpu --rows harness_fp32,sgdhd_train
    python -m bench.gpu --smoke --device cpu       # tiny sizes, any device: what the fast-tier test runs

Each row is a ratio (or an MRAE) with the two measurements behind it, its goal from the issue and whether it is
met. Timings: warm-up first, then the two sides of a ratio alternate (A B, B A, ...) in blocks of steps, each block
between two device synchronisations; the figures are the medians of the blocks. Memory: the peak of
``torch.cuda.max_memory_allocated`` during one step (forward and backward, from gradients set to None); on the
CPU the allocator-level peak above the memory held before the step, from ``torch.profiler`` (``profile_memory``).
The last two rows before ``pytest -m gpu`` are the figures a user of greedy training sizes a run by:
``sedona_maxbatch``, the largest batch backprop and K = 2/4/8 train under one memory cap (each step really runs
under ``torch.cuda.set_per_process_memory_fraction``), and ``sedona_b1024_wscap``, the K = 4 memory row again in a
child process whose cuDNN workspaces are capped (``CUDNN_CONV_WSCAP_DBG``). A tight budget skips them first; run
them alone with ``--rows sedona_maxbatch,sedona_b1024_wscap``.
Every row runs in its own ``try``: a failing row prints ``error: <one line>`` and the others go on. A row that
would not finish inside ``--budget-s`` (time kept for ``pytest -m gpu``, the last row) is ``skipped: time budget``.

Only public torch APIs; the project is imported from this checkout (run from the repository root, or with it on
``PYTHONPATH``). Nothing is written outside ``--out`` and one temporary folder (the compiler caches go to a folder
under the system's temporary directory unless ``TORCHINDUCTOR_CACHE_DIR`` / ``TRITON_CACHE_DIR`` are set).
Exit status: 0 when no row errored, 1 when one did, 2 on a bad argument.
"""

from __future__ import annotations

import time

T0 = time.monotonic()  # run as a program, the budget counts from here: imports included

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from common.memory import cpu_peak_bytes  # noqa: E402

MIB = 2**20


# ----------------------------------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Sizes:
    """The problem sizes of one run: the issue's (default) or tiny ones (``--smoke``)."""

    smoke: bool = False
    # harness loop vs bare loop
    harness_net: str = "resnet18"
    harness_train: int = 12_800
    harness_test: int = 1_024
    harness_batch: int = 256
    harness_epochs: int = 2
    harness_repeats: int = 3
    # train steps / optimizer steps
    step_net: str = "resnet18"
    step_batch: int = 128
    step_warmup: int = 5
    step_iters: int = 20  # steps per timed block
    step_samples: int = 7  # timed blocks per side
    opt_iters: int = 50  # optimizer.step() calls per timed block
    hyper_iters: int = 10  # MARTHE / SGDHD steps per timed block
    hyper_samples: int = 5
    # SEDONA memory
    sedona_feat_mult: float = 1.0
    sedona_batches: tuple[int, int] = (1024, 256)
    sedona_blocks: int = 4
    sedona_probe: int = 4
    sedona_repeats: int = 2
    # ECC cost fits
    ecc_widths: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # (conv widths, hidden): None = default
    ecc_samples: int = 30
    # the GPU protocol (issue 14 item 4): a larger batch than the 8, each latency sample 20 passes
    # between one event pair, passes replayed as a CUDA graph, 2 interleaved rounds (forward, reverse) per
    # configuration for latency (their mean cancels a linear drift of the GPU's speed over the run)
    ecc_batch: int = 64
    ecc_passes: int = 20
    ecc_repeats: int = 15
    ecc_graph: bool = True
    ecc_rounds: int = 2
    ecc_cpu_repeats: int = 20


FULL = Sizes()
SMOKE = Sizes(
    smoke=True,
    harness_net="lenet5",
    harness_train=128,
    harness_test=64,
    harness_batch=64,
    harness_repeats=1,
    step_net="lenet5",
    step_batch=8,
    step_warmup=2,
    step_iters=2,
    step_samples=2,
    opt_iters=3,
    hyper_iters=1,
    hyper_samples=2,
    sedona_feat_mult=0.0625,
    sedona_batches=(8, 4),
    sedona_repeats=1,
    ecc_widths=((16, 32, 32, 32, 32), (64, 64)),
    ecc_samples=10,
    ecc_batch=1,
    ecc_passes=2,
    ecc_repeats=2,
    ecc_rounds=2,
    ecc_cpu_repeats=2,
)


class RowSkipped(Exception):
    """The row cannot run here; the message is the reason (``status`` ``skipped`` or ``n/a``)."""

    def __init__(self, reason: str, status: str = "skipped"):
        super().__init__(reason)
        self.status = status


class RowTimeout(Exception):
    """Raised by the per-row watchdog."""


# ---------------------------------------------------------------------------------------------- the context
class Bench:
    """What the rows share: device, sizes, the temporary folder, caches of one group of rows."""

    def __init__(self, device: torch.device, sizes: Sizes, tmp: Path):
        self.device = device
        self.sizes = sizes
        self.tmp = tmp
        self.shared: dict[str, dict[str, Any]] = {}

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type != "cpu":
            backend = getattr(torch, self.device.type, None)
            if backend is not None and hasattr(backend, "synchronize"):
                backend.synchronize()

    def cache(self, group: str) -> dict[str, Any]:
        return self.shared.setdefault(group, {})

    def release_except(self, group: str) -> None:
        """Free the caches of the other groups (memory rows must not see their tensors)."""
        stale = [g for g in self.shared if g != group]
        for g in stale:
            del self.shared[g]
        if stale:
            gc.collect()
            if self.cuda:
                torch.cuda.empty_cache()

    def folder(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{name}_", dir=self.tmp))
        return path


def interleaved(
    bench: Bench, fns: Sequence[Callable[[], Any]], *, warmup: int, iters: int, samples: int
) -> list[float]:
    """Median seconds per call of each fn: warm-up, then blocks of ``iters`` calls, sides alternating (ABBA)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    bench.sync()
    times: list[list[float]] = [[] for _ in fns]
    for s in range(samples):
        order = list(range(len(fns)))
        if s % 2:
            order.reverse()
        for i in order:
            bench.sync()
            t0 = time.perf_counter()
            for _ in range(iters):
                fns[i]()
            bench.sync()
            times[i].append((time.perf_counter() - t0) / iters)
    return [statistics.median(t) for t in times]


def side(label: str, value: float, unit: str) -> dict[str, Any]:
    return {"label": label, "value": value, "unit": unit}


def ratio_result(
    a: dict[str, Any], b: dict[str, Any], ips: tuple[float, float] | None = None, **extra: Any
) -> dict[str, Any]:
    out = {"value": a["value"] / b["value"], "a": a, "b": b, **extra}
    if ips is not None:
        out["ips_a"], out["ips_b"] = ips
    return out


@contextlib.contextmanager
def captured_warnings(logger_name: str):
    """Collect the WARNING records of ``logger_name`` (e.g. ECCO's fused-compile fallback) during the block."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.WARNING)
    log = logging.getLogger(logger_name)
    log.addHandler(handler)
    try:
        yield records
    finally:
        log.removeHandler(handler)


# ------------------------------------------------------------------------------------ harness vs bare loop
def _harness_data(bench: Bench):
    cache = bench.cache("harness")
    if "data" not in cache:
        from common.data import build_data

        s = bench.sizes
        cfg = {
            "name": "synthetic",
            "shape": [3, 32, 32],
            "num_classes": 10,
            "train_size": s.harness_train,
            "val_size": 0,
            "test_size": s.harness_test,
            "batch_size": s.harness_batch,
            "eval_batch_size": s.harness_batch,
        }
        cache["data"] = build_data(cfg, data_dir=bench.tmp, seed=0, device=bench.device, image_size=32)
    return cache["data"]


def _bare_loop(
    bench: Bench, model: nn.Module, data, epochs: int, amp: bool, limit: int | None = None
) -> None:
    """The hand-written loop: same batches, same optimizer, the same test evaluation at the end."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dtype = torch.bfloat16
    model.train()
    for epoch in range(epochs):
        for i, (x, y) in enumerate(data.train.epoch_iter(epoch)):
            if limit is not None and i >= limit:
                break
            opt.zero_grad(set_to_none=True)
            with torch.autocast(bench.device.type, dtype=dtype, enabled=amp):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
    model.eval()
    loss_sum = torch.zeros((), device=bench.device)
    correct = torch.zeros((), device=bench.device, dtype=torch.long)
    with torch.no_grad():
        for x, y in data.test.epoch_iter(0):
            with torch.autocast(bench.device.type, dtype=dtype, enabled=amp):
                out = model(x)
            loss_sum += F.cross_entropy(out.float(), y, reduction="sum")
            correct += (out.argmax(1) == y).sum()
    _ = (loss_sum.item(), correct.item())  # wait for the evaluation, as the harness's .item() does
    model.train()


def _harness_loop(
    bench: Bench, model: nn.Module, data, epochs: int, amp: bool, limit: int | None = None
) -> None:
    """``common.engine.Trainer.fit()`` as a user runs it: logging, NaN checks, the final checkpoint, the test."""
    from common.checkpoint import CheckpointManager
    from common.engine import RunContext, Trainer
    from common.logging import RunLogger

    try:
        from common.config import TrainerOptions
    except ImportError:  # the options dataclass may move: the engine re-exports what it uses
        from common.engine import TrainerOptions

    folder = bench.folder("harness")
    logger = RunLogger(folder)
    try:
        ctx = RunContext(
            cfg=None, output_dir=folder, device=bench.device, logger=logger,
            checkpoints=CheckpointManager(folder), progress=False,
        )  # fmt: skip
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        options = TrainerOptions(
            epochs=epochs, amp=amp, amp_dtype="bfloat16", resume=False, limit_train_batches=limit
        )
        Trainer(model, opt, data, ctx, options).fit()
    finally:
        logger.finish()
        shutil.rmtree(folder, ignore_errors=True)


def row_harness(bench: Bench, amp: bool) -> dict[str, Any]:
    from common.models import build_model

    s = bench.sizes
    data = _harness_data(bench)
    torch.manual_seed(0)
    model = build_model(s.harness_net, num_classes=10, in_channels=3, image_size=32).to(bench.device)
    init = copy.deepcopy(model.state_dict())
    # warm-up: kernels, allocator, the harness's first-call costs
    _harness_loop(bench, model, data, 1, amp, limit=3)
    _bare_loop(bench, model, data, 1, amp, limit=3)
    loops = {"harness": _harness_loop, "bare": _bare_loop}
    times: dict[str, list[float]] = {k: [] for k in loops}
    for r in range(s.harness_repeats):
        order = list(loops) if r % 2 == 0 else list(reversed(loops))
        for name in order:
            model.load_state_dict(init)
            bench.sync()
            t0 = time.perf_counter()
            loops[name](bench, model, data, s.harness_epochs, amp)
            bench.sync()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    images = s.harness_epochs * data.train.num_samples
    return ratio_result(
        side("harness", med["harness"] * 1e3, "ms"),
        side("bare", med["bare"] * 1e3, "ms"),
        ips=(images / med["harness"], images / med["bare"]),
        note="harness = Trainer.fit() (final checkpoint and test evaluation included; the bare loop evaluates "
        "the test split too)",
        samples_s=times,
    )


# ---------------------------------------------------------------------------------------- optimizer rows
def _step_model(bench: Bench) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    from common.models import build_model

    s = bench.sizes
    cache = bench.cache("steps")
    if "model" not in cache:
        torch.manual_seed(0)
        cache["model"] = build_model(s.step_net, num_classes=10, in_channels=3, image_size=32)
        g = torch.Generator().manual_seed(0)
        cache["x"] = torch.randn(s.step_batch, 3, 32, 32, generator=g).to(bench.device)
        cache["y"] = torch.randint(0, 10, (s.step_batch,), generator=g).to(bench.device)
        cache["xv"] = torch.randn(s.step_batch, 3, 32, 32, generator=g).to(bench.device)
        cache["yv"] = torch.randint(0, 10, (s.step_batch,), generator=g).to(bench.device)
    # each side trains its own copy of the same initial weights
    return copy.deepcopy(cache["model"]).to(bench.device), cache["x"], cache["y"]


def _train_step(model: nn.Module, opt: Any, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def _fused_guard(bench: Bench, fused: bool) -> None:
    if fused and bench.sizes.smoke and bench.device.type == "cpu":
        raise RowSkipped("--smoke on cpu: fused=True compiles C++ kernels first (about a minute cold here)")


def _ecco(model: nn.Module, fused: bool, limited: bool):
    from ecco import ECCO

    return ECCO(
        model.parameters(), eta=0.3, alpha_0=1e-3, fused=fused, limit_activations=model if limited else None
    )


def _fallback_note(records: list[logging.LogRecord]) -> str | None:
    msgs = [r.getMessage() for r in records if "compile" in r.getMessage().lower()]
    return f"FUSED FELL BACK TO FOREACH: {msgs[0]}" if msgs else None


def row_ecco_train(bench: Bench, fused: bool, limited: bool) -> dict[str, Any]:
    _fused_guard(bench, fused)
    s = bench.sizes
    m_sgd, x, y = _step_model(bench)
    m_ecco, _, _ = _step_model(bench)
    sgd = torch.optim.SGD(m_sgd.parameters(), lr=1e-3, foreach=True)
    with captured_warnings("ecco") as records:
        ecco = _ecco(m_ecco, fused, limited)
        try:
            t_ecco, t_sgd = interleaved(
                bench,
                [_train_step(m_ecco, ecco, x, y), _train_step(m_sgd, sgd, x, y)],
                warmup=s.step_warmup,
                iters=s.step_iters,
                samples=s.step_samples,
            )
        finally:
            ecco.remove_hooks()
    label = "ECCO" + (" limited" if limited else "") + (" fused" if fused else "")
    return ratio_result(
        side(label, t_ecco * 1e3, "ms"),
        side("SGD", t_sgd * 1e3, "ms"),
        ips=(s.step_batch / t_ecco, s.step_batch / t_sgd),
        note=_fallback_note(records),
    )


def row_ecco_step(bench: Bench, fused: bool) -> dict[str, Any]:
    """optimizer.step() alone, repeated on the gradients of one backward (as bench/ecco.py times it)."""
    _fused_guard(bench, fused)
    s = bench.sizes
    m_sgd, x, y = _step_model(bench)
    m_ecco, _, _ = _step_model(bench)
    sgd = torch.optim.SGD(m_sgd.parameters(), lr=1e-3, foreach=True)
    with captured_warnings("ecco") as records:
        ecco = _ecco(m_ecco, fused, limited=False)
        for model, opt in ((m_sgd, sgd), (m_ecco, ecco)):
            for _ in range(2):  # ECCO's first step is plain GD (alpha_0): reach the steady state
                _train_step(model, opt, x, y)()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
        t_ecco, t_sgd = interleaved(
            bench, [ecco.step, sgd.step], warmup=s.step_warmup, iters=s.opt_iters, samples=s.step_samples
        )
    label = "ECCO fused" if fused else "ECCO"
    return ratio_result(
        side(f"{label} step", t_ecco * 1e3, "ms"),
        side("SGD-foreach step", t_sgd * 1e3, "ms"),
        note=_fallback_note(records),
    )


def row_marthe(bench: Bench) -> dict[str, Any]:
    from adatune import MARTHE

    s = bench.sizes
    m_sgd, x, y = _step_model(bench)
    m_marthe, _, _ = _step_model(bench)
    cache = bench.cache("steps")
    xv, yv = cache["xv"], cache["yv"]
    sgd = torch.optim.SGD(m_sgd.parameters(), lr=1e-3, momentum=0.9)
    tuner = MARTHE(torch.optim.SGD(m_marthe.parameters(), lr=1e-3, momentum=0.9), hyper_lr=1e-9, mu=0.9)

    def val() -> torch.Tensor:
        m_marthe.eval()
        try:
            return F.cross_entropy(m_marthe(xv), yv)
        finally:
            m_marthe.train()

    def marthe_step() -> None:
        tuner.step(F.cross_entropy(m_marthe(x), y), val)

    t_m, t_sgd = interleaved(
        bench,
        [marthe_step, _train_step(m_sgd, sgd, x, y)],
        warmup=max(2, s.step_warmup // 2),  # the first MARTHE step has no tangent yet
        iters=s.hyper_iters,
        samples=s.hyper_samples,
    )
    return ratio_result(
        side("MARTHE", t_m * 1e3, "ms"),
        side("SGD-momentum", t_sgd * 1e3, "ms"),
        ips=(s.step_batch / t_m, s.step_batch / t_sgd),
        note="MARTHE's step includes its validation forward/backward on a second batch",
    )


def row_sgdhd(bench: Bench) -> dict[str, Any]:
    from adatune import SGDHD

    s = bench.sizes
    m_sgd, x, y = _step_model(bench)
    m_hd, _, _ = _step_model(bench)
    sgd = torch.optim.SGD(m_sgd.parameters(), lr=1e-3, momentum=0.9)
    hd = SGDHD(m_hd.parameters(), lr=1e-3, momentum=0.9, hypergrad_lr=1e-9)
    t_hd, t_sgd = interleaved(
        bench,
        [_train_step(m_hd, hd, x, y), _train_step(m_sgd, sgd, x, y)],
        warmup=s.step_warmup,
        iters=s.step_iters,
        samples=s.step_samples,
    )
    return ratio_result(
        side("SGDHD", t_hd * 1e3, "ms"),
        side("SGD-momentum", t_sgd * 1e3, "ms"),
        ips=(s.step_batch / t_hd, s.step_batch / t_sgd),
    )


# ------------------------------------------------------------------------------------------ SEDONA memory
# cpu_peak_bytes (common.memory): the CPU allocator's peak from torch.profiler's memory events
def _sedona_net(bench: Bench):
    cache = bench.cache("sedona")
    if "net" not in cache:
        from sedona import build_decoupled

        torch.manual_seed(0)
        cache["net"] = build_decoupled(
            "vgg19", 10, 3, image_size=32, feat_mult=bench.sizes.sedona_feat_mult, aux="mlp_sr", heads=False
        ).to(bench.device)
    return cache["net"]


def _sedona_batch(bench: Bench, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(bench.device)
    return x, torch.randint(0, 10, (batch,), generator=g).to(bench.device)


def _sedona_peak(bench: Bench, dec, batch: int) -> dict[str, float]:
    """Peak memory of one per-block step (forward, each block's backward as soon as its loss exists)."""
    net = _sedona_net(bench)
    net.set_decoupling(dec)
    x, y = _sedona_batch(bench, batch)

    def step() -> None:
        for loss, _ in net.block_outputs(x, y, dec):
            loss.backward()

    peaks, before = [], 0
    step()  # warm-up: cuDNN handles, allocator, the heads' first use
    for _ in range(bench.sizes.sedona_repeats):
        net.zero_grad(set_to_none=True)
        gc.collect()
        if bench.cuda:
            torch.cuda.synchronize(bench.device)
            torch.cuda.reset_peak_memory_stats(bench.device)
            before = torch.cuda.memory_allocated(bench.device)
            step()
            torch.cuda.synchronize(bench.device)
            peaks.append(torch.cuda.max_memory_allocated(bench.device))
        elif bench.device.type == "cpu":
            peaks.append(cpu_peak_bytes(step, bench.tmp))
        else:
            raise RowSkipped(f"n/a on {bench.device.type}: no allocator peak for this device", "n/a")
    net.zero_grad(set_to_none=True)
    return {"peak": max(peaks), "before": before}


def _allocator_balanced(bench: Bench, batch: int, num_blocks: int):
    """The split balancing each block's allocator step peak at ``batch`` (``method.balance_by=allocator``, as
    ``balanced_decoupling(..., measure="allocator")``); the per-block peaks are measured once per batch size."""
    from sedona.memory import balanced_split, block_peaks
    from sedona.network import Decoupling

    cache = bench.cache("sedona")
    key = f"block_peaks_{batch}"
    if key not in cache:
        x, y = _sedona_batch(bench, batch)
        cache[key] = block_peaks(_sedona_net(bench), x, y)
    return Decoupling(balanced_split(cache[key], num_blocks))


def row_sedona_maxbatch(bench: Bench) -> dict[str, Any]:
    """The largest batch that trains under the memory backprop needs at the first SEDONA batch size."""
    from sedona import uniform_split
    from sedona.memory import largest_batch_under_cap, step_footprint

    s = bench.sizes
    batch = s.sedona_batches[0]
    net = _sedona_net(bench)
    backprop = uniform_split(net.num_units, 1)
    cap = step_footprint(net, backprop, batch, (3, 32, 32))
    # steps of 32 samples on the GPU (a handful of tries per split); 2 at least (BatchNorm of a 1x1 map)
    multiple = 2 if s.smoke else 32
    found, tries = {}, 0
    for k in (1, 2, 4, 8):
        dec = backprop if k == 1 else _allocator_balanced(bench, batch, k)
        found[k], n = largest_batch_under_cap(
            net, dec, cap, (3, 32, 32), start=multiple, limit=16 * batch, multiple=multiple
        )
        tries += n
    if found[4] == 0:
        raise RuntimeError(f"K=4 does not train a batch of {multiple} under {cap / MIB:.0f} MiB")
    how = (
        "set_per_process_memory_fraction, OOM = does not fit" if bench.cuda else "parameters + profiled peak"
    )
    return ratio_result(
        side("backprop", found[1], "samples"),
        side("K=4 balanced-a", found[4], "samples"),
        largest_batch=found,
        cap_mib=cap / MIB,
        note=(
            f"cap {cap / MIB:.0f} MiB = backprop's step at batch {batch} ({how}); largest batch K=1/2/4/8 "
            f"(K>1 balanced by allocator peak): {found[1]}/{found[2]}/{found[4]}/{found[8]}, in steps of "
            f"{multiple}, {tries} steps tried"
        ),
    )


WSCAP_MIB = 256  # the cuDNN workspace cap the wscap row tries (CUDNN_CONV_WSCAP_DBG, MiB)


def row_sedona_wscap(bench: Bench) -> dict[str, Any]:
    """The K = 4 allocator-balanced memory row again, in a child process whose cuDNN workspaces are capped.

    ``CUDNN_CONV_WSCAP_DBG`` (MiB, read by PyTorch's cuDNN convolutions) must be in the environment before the
    first convolution, hence the child (``python -m bench.gpu --rows ...`` with the variable set).
    """
    if not bench.cuda:
        raise RowSkipped(
            f"n/a on {bench.device.type}: CUDNN_CONV_WSCAP_DBG caps cuDNN's workspaces (CUDA)", "n/a"
        )
    rows = ["sedona_b1024_uniform", "sedona_b1024_allocator"]
    out = bench.tmp / "wscap.json"
    env = child_env(CUDNN_CONV_WSCAP_DBG=str(WSCAP_MIB))
    cmd = [sys.executable, "-m", "bench.gpu", "--device", str(bench.device), "--rows", ",".join(rows)]
    cmd += ["--smoke"] if bench.sizes.smoke else []
    proc = subprocess.run(
        [*cmd, "--out", str(out), "--budget-s", "150"], env=env, cwd=REPO, capture_output=True, text=True,
        timeout=200,
    )  # fmt: skip
    if not out.exists():
        raise RuntimeError(f"the child run wrote no table (rc {proc.returncode}): {proc.stderr[-300:]}")
    saved = json.loads(out.read_text())
    if saved["meta"].get("cudnn_wscap_mib") != str(WSCAP_MIB):
        raise RuntimeError(f"the child did not see CUDNN_CONV_WSCAP_DBG={WSCAP_MIB}: {saved['meta']}")
    child = {r["name"]: r for r in saved["rows"]}
    bad = [f"{n}: {r.get('reason')}" for n, r in child.items() if r["status"] != "ok"]
    if bad:
        raise RuntimeError("child rows failed: " + "; ".join(bad))
    alloc, uniform = child["sedona_b1024_allocator"], child["sedona_b1024_uniform"]
    return {
        "value": alloc["value"],
        "a": alloc["a"],
        "b": alloc["b"],
        "note": (
            f"CUDNN_CONV_WSCAP_DBG={WSCAP_MIB}: backprop {alloc['b']['value']:.0f} MiB, uniform K=4 "
            f"{uniform['value']:.3f}, balanced by allocator {alloc['value']:.3f} "
            f"(ends {alloc.get('block_ends')})"
        ),
    }


def row_sedona(bench: Bench, batch_index: int, split: str) -> dict[str, Any]:
    from sedona import uniform_split
    from sedona.memory import balanced_decoupling

    s = bench.sizes
    batch = s.sedona_batches[batch_index]
    net = _sedona_net(bench)
    cache = bench.cache("sedona")
    key = f"backprop_{batch}"
    if key not in cache:
        cache[key] = _sedona_peak(bench, uniform_split(net.num_units, 1), batch)
    backprop = cache[key]
    if split == "uniform":
        dec = uniform_split(net.num_units, s.sedona_blocks)
    elif split == "balanced":
        # by the saved activation bytes (method.balance_by=saved), probed on a few samples
        if "balanced" not in cache:
            x, y = _sedona_batch(bench, s.sedona_probe)
            cache["balanced"] = balanced_decoupling(net, s.sedona_blocks, x, y)
        dec = cache["balanced"]
    else:  # by each block's allocator peak at this batch size (method.balance_by=allocator, auto on CUDA)
        dec = _allocator_balanced(bench, batch, s.sedona_blocks)
    greedy = _sedona_peak(bench, dec, batch)
    kind = "max_memory_allocated" if bench.cuda else "profiler allocator peak above the start"
    return ratio_result(
        side(f"K={s.sedona_blocks} {split}", greedy["peak"] / MIB, "MiB"),
        side("backprop", backprop["peak"] / MIB, "MiB"),
        block_ends=list(dec.block_ends),
        resident_before_mib={"greedy": greedy["before"] / MIB, "backprop": backprop["before"] / MIB},
        note=f"{kind}; ends {list(dec.block_ends)}; cudnn.enabled={torch.backends.cudnn.enabled}",
    )


# ------------------------------------------------------------------------------------------- ECC cost fits
def row_ecc(bench: Bench, backend_name: str) -> dict[str, Any]:
    s = bench.sizes
    note = None
    if backend_name == "energy_nvml":
        if not bench.cuda:
            raise RowSkipped(
                f"n/a on {bench.device.type}: energy_nvml reads a CUDA GPU's NVML counter", "n/a"
            )
        if importlib.util.find_spec("pynvml") is None:
            raise RowSkipped("pynvml is not importable (pip install nvidia-ml-py)")
    if backend_name == "latency_cuda" and not bench.cuda:
        backend_name = "latency_cpu"
        note = (
            f"latency_cpu stands in for latency_cuda on {bench.device.type} (the protocol's code path only)"
        )
    from common.data import build_data
    from common.models import build_model
    from ecc.cost import CostBackendUnavailable, collect_cost_data, make_backend
    from ecc.energy_model import BilinearEnergyModel, split_holdout

    data = build_data(
        {"name": "digits", "batch_size": 8, "eval_batch_size": 8},
        data_dir=bench.tmp, seed=0, device=bench.device, image_size=32,
    )  # fmt: skip
    example = next(iter(data.test.epoch_iter(0)))[0][:1]
    torch.manual_seed(0)
    widths = (
        {} if s.ecc_widths is None else {"widths": list(s.ecc_widths[0]), "hidden": list(s.ecc_widths[1])}
    )
    model = build_model("alexnet_small", num_classes=10, in_channels=1, image_size=32, **widths)
    model = model.to(bench.device).eval()
    kwargs: dict[str, Any] = {"batch": s.ecc_batch}
    rounds = s.ecc_rounds
    if backend_name == "latency_cpu":
        kwargs.update(repeats=s.ecc_cpu_repeats, threads=torch.get_num_threads())
    elif backend_name == "latency_cuda":
        kwargs.update(repeats=s.ecc_repeats, passes=s.ecc_passes, graph=s.ecc_graph)
    else:  # energy_nvml: each measurement is a >= 2 s window already; one round keeps the row near 100 s
        kwargs.update(graph=s.ecc_graph)
        rounds = 1
    try:
        backend = make_backend(backend_name, **kwargs)
    except CostBackendUnavailable as exc:
        raise RowSkipped(str(exc)) from None
    t0 = time.perf_counter()
    chains, costs, meta = collect_cost_data(
        model, example, backend, s.ecc_samples, seed=1, show_progress=False, rounds=rounds
    )
    measure_s = time.perf_counter() - t0
    train, hold = split_holdout(len(costs), 0.2, seed=117)
    fit = BilinearEnergyModel(meta["width_upper_bounds"]).fit(chains[train], costs[train])
    scale, unit = (1e3, "ms") if backend.unit == "s" else (1e3, "mJ")
    return {
        "value": fit.mrae(chains[hold], costs[hold]),
        "a": side("dense", float(meta["dense_cost"]) * scale, unit),
        "b": side("all-ones", float(meta["ones_cost"]) * scale, unit),
        "train_mrae": fit.mrae(chains[train], costs[train]),
        "backend": backend.describe(),
        "measure_s": measure_s,
        "note": note,
    }


# -------------------------------------------------------------------------------------------- pytest -m gpu
SUMMARY = re.compile(r"\b\d+ (passed|failed|skipped|errors?|deselected|xfailed|xpassed)\b|no tests ran")


def pytest_summary(output: str) -> str | None:
    """The last line of pytest's output that reports counts (``7 passed, 1 failed in 80.1s``)."""
    for line in reversed(output.strip().splitlines()):
        if SUMMARY.search(line):
            return line.strip().strip("=").strip()
    return None


def child_env(repo: Path = REPO, **extra: str) -> dict[str, str]:
    """The environment of a child Python process of this run: ours, the checkout first on ``PYTHONPATH``,
    plus ``extra``."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH", "")) if p)
    return env


def run_pytest(command: Sequence[str], timeout_s: float, cwd: Path = REPO) -> dict[str, Any]:
    """Run ``command`` (pytest) and return its summary line and whether everything passed."""
    env = child_env(cwd)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            list(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise RuntimeError(
            f"pytest -m gpu did not finish within {timeout_s:.0f} s (time budget); last line: "
            f"{(out.strip().splitlines() or [''])[-1][:120]!r}"
        ) from None
    output = proc.stdout + proc.stderr
    summary = pytest_summary(proc.stdout) or pytest_summary(output)
    if summary is None:
        tail = (output.strip().splitlines() or [""])[-1]
        raise RuntimeError(f"pytest exited {proc.returncode} without a summary line: {tail[:160]}")
    failed = [ln.strip() for ln in proc.stdout.splitlines() if ln.startswith(("FAILED ", "ERROR "))]
    passed = proc.returncode in (0, 5) and not re.search(r"\b(failed|errors?)\b", summary)
    return {
        "summary": summary,
        "returncode": proc.returncode,
        "all_passed": passed,
        "failures": failed,
        "seconds": time.perf_counter() - t0,
        "output_tail": output[-3000:],
    }


def row_pytest(bench: Bench, timeout_s: float) -> dict[str, Any]:
    if bench.sizes.smoke:
        raise RowSkipped("--smoke: the smoke test itself runs inside pytest (not nested)")
    if importlib.util.find_spec("pytest") is None:
        raise RowSkipped("pytest is not importable here")
    if timeout_s < 30:
        raise RowSkipped(f"time budget ({timeout_s:.0f} s left for pytest -m gpu)")
    result = run_pytest(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"], timeout_s
    )
    return {"text": result.pop("summary"), "met": result["all_passed"], **result}


# ------------------------------------------------------------------------------------------------- the rows
@dataclass(frozen=True)
class RowSpec:
    name: str
    figure: str  # may use {sizes} fields
    goal: float | None  # value <= goal is met
    goal_text: str
    before: str  # the H200 figure ("now" column)
    est_s: float  # rough seconds on an H200, for the time budget
    run: Callable[..., dict[str, Any]]

    @property
    def group(self) -> str:
        # rows of one group share a cache (data, model, net); the others' caches are freed before a row runs
        prefix = self.name.split("_")[0]
        return "steps" if prefix in ("ecco", "marthe", "sgdhd") else prefix


def _spec_rows() -> list[RowSpec]:
    harness = (
        "{harness_epochs} epochs, {harness_train} in-memory 3x32x32, {harness_net}, batch {harness_batch}"
    )
    step = "{step_net}, batch {step_batch}"
    sed = "VGG-19 (fm {sedona_feat_mult:g}), per-block backward, K = {sedona_blocks}"
    ecc = (
        "alexnet_small, digits 32 px, batch {ecc_batch}, {ecc_samples} samples; CUDA: {ecc_passes} passes per "
        "event pair, CUDA graph {ecc_graph}, latency {ecc_rounds} interleaved rounds"
    )
    rows = [
        RowSpec("harness_fp32", f"harness loop / bare loop, fp32 ({harness})", 1.05, "<= 1.05", "1.39", 30,
                lambda b: row_harness(b, amp=False)),
        RowSpec("harness_bf16", f"harness loop / bare loop, AMP bf16 ({harness})", 1.05, "<= 1.05", "", 25,
                lambda b: row_harness(b, amp=True)),
        RowSpec("ecco_train_foreach", f"ECCO train step / SGD train step, foreach ({step})", 1.10, "<= 1.10",
                "1.30", 10, lambda b: row_ecco_train(b, fused=False, limited=False)),
        RowSpec("ecco_train_fused", f"ECCO train step / SGD train step, fused ({step})", 1.10, "<= 1.10",
                "1.58", 60, lambda b: row_ecco_train(b, fused=True, limited=False)),
        RowSpec("ecco_step_foreach", f"ECCO optimizer.step() / SGD-foreach step, foreach ({step})", 3.0, "<= 3",
                "11.8", 6, lambda b: row_ecco_step(b, fused=False)),
        RowSpec("ecco_step_fused", f"ECCO optimizer.step() / SGD-foreach step, fused ({step})", 3.0, "<= 3",
                "21.2", 10, lambda b: row_ecco_step(b, fused=True)),
        RowSpec("ecco_limited_train_foreach", f"ECCO + activation limiting train step / SGD's, foreach ({step})",
                1.30, "<= 1.30", "1.70", 12, lambda b: row_ecco_train(b, fused=False, limited=True)),
        RowSpec("ecco_limited_train_fused", f"ECCO + activation limiting train step / SGD's, fused ({step})",
                1.30, "<= 1.30", "1.96", 30, lambda b: row_ecco_train(b, fused=True, limited=True)),
        RowSpec("marthe_train", f"MARTHE train step / SGD-momentum train step ({step})", 4.0, "<= 4", "5.72", 15,
                row_marthe),
        RowSpec("sgdhd_train", f"SGDHD train step / SGD-momentum train step ({step})", 1.10, "<= 1.10", "1.32", 8,
                row_sgdhd),
        RowSpec("sedona_b1024_uniform", f"SEDONA {sed}, uniform: peak memory step / backprop's, batch "
                "{sedona_batches[0]}", 0.5, "<= 0.5", "0.999", 12, lambda b: row_sedona(b, 0, "uniform")),
        RowSpec("sedona_b1024_balanced", f"SEDONA {sed}, balanced: peak memory step / backprop's, batch "
                "{sedona_batches[0]}", 0.5, "<= 0.5", "0.911", 8, lambda b: row_sedona(b, 0, "balanced")),
        RowSpec("sedona_b1024_allocator", f"SEDONA {sed}, balanced by allocator peak: peak memory step / "
                "backprop's, batch {sedona_batches[0]}", 0.5, "<= 0.5", "", 15, lambda b: row_sedona(b, 0, "allocator")),
        RowSpec("sedona_b256_uniform", f"SEDONA {sed}, uniform: peak memory step / backprop's, batch "
                "{sedona_batches[1]}", 0.5, "<= 0.5", "0.977", 5, lambda b: row_sedona(b, 1, "uniform")),
        RowSpec("sedona_b256_balanced", f"SEDONA {sed}, balanced: peak memory step / backprop's, batch "
                "{sedona_batches[1]}", 0.5, "<= 0.5", "0.889", 4, lambda b: row_sedona(b, 1, "balanced")),
        RowSpec("sedona_b256_allocator", f"SEDONA {sed}, balanced by allocator peak: peak memory step / "
                "backprop's, batch {sedona_batches[1]}", 0.5, "<= 0.5", "", 6, lambda b: row_sedona(b, 1, "allocator")),
        RowSpec("ecc_latency_cuda", f"ECC latency_cuda bilinear fit, holdout MRAE ({ecc})", 0.05, "<= 0.05",
                "0.172", 20, lambda b: row_ecc(b, "latency_cuda")),
        RowSpec("ecc_energy_nvml", f"ECC energy_nvml bilinear fit, holdout MRAE ({ecc})", 0.08, "<= 0.08",
                "0.275", 100, lambda b: row_ecc(b, "energy_nvml")),
        # item 3's user figures last: a tight budget skips them first (run them with --rows)
        RowSpec("sedona_maxbatch", f"SEDONA {sed}: largest batch under backprop's memory at batch "
                "{sedona_batches[0]}, backprop's / K=4's (balanced by allocator peak)", 0.5, "<= 0.5", "", 25,
                row_sedona_maxbatch),
        RowSpec("sedona_b1024_wscap", f"SEDONA {sed}, balanced by allocator peak, cuDNN workspaces capped at "
                f"{WSCAP_MIB} MiB: peak memory step / backprop's, batch " "{sedona_batches[0]}", 0.5, "<= 0.5",
                "", 45, row_sedona_wscap),
        RowSpec("pytest_gpu", "pytest -m gpu", None, "all pass", "7 passed, 1 failed", 0, row_pytest),
    ]  # fmt: skip
    return rows


ROWS = _spec_rows()
ROW_NAMES = [r.name for r in ROWS]


# --------------------------------------------------------------------------------------------- the runner
@contextlib.contextmanager
def watchdog(seconds: float):
    """Raise :class:`RowTimeout` in the main thread after ``seconds`` (POSIX; a no-op elsewhere)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable or seconds <= 0:
        yield
        return

    def fire(signum, frame):
        raise RowTimeout(f"row stopped after {seconds:.0f} s (time budget)")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def run_row(
    spec: RowSpec, bench: Bench, budget_s: float, reserve_s: float, start: float = T0
) -> dict[str, Any]:
    s = bench.sizes
    row: dict[str, Any] = {
        "name": spec.name,
        "figure": spec.figure.format(**vars(s)),
        "goal": spec.goal,
        "goal_text": spec.goal_text,
        "before": spec.before,
        "status": "ok",
    }
    elapsed = time.monotonic() - start
    est = 3.0 if s.smoke else spec.est_s
    bench.release_except(spec.group)
    t0 = time.monotonic()
    try:
        if spec.name == "pytest_gpu":
            result = spec.run(bench, budget_s - elapsed - 5)
        else:
            if elapsed + est > budget_s - reserve_s:
                raise RowSkipped(
                    f"time budget ({elapsed:.0f} s used, about {est:.0f} s needed, budget {budget_s:.0f} s)"
                )
            with watchdog(budget_s - reserve_s - elapsed):
                result = spec.run(bench)
        row.update(result)
        if spec.goal is not None:
            if not _finite(row.get("value")):
                raise RuntimeError(f"non-finite result {row.get('value')!r}")
            row["met"] = bool(row["value"] <= spec.goal)
    except RowSkipped as exc:
        row.update(status=exc.status, reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - one row's failure is its cell, the others go on
        row.update(status="error", reason=one_line(exc))
        logging.getLogger("bench.gpu").debug("row %s failed", spec.name, exc_info=True)
    finally:
        if bench.cuda:  # the next row's memory figures must not hold this row's garbage
            gc.collect()
    row["seconds"] = time.monotonic() - t0
    return row


# ----------------------------------------------------------------------------------------------- printing
def _num(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _side_cell(sd: dict[str, Any] | None) -> str:
    if not sd:
        return ""
    return f"{sd['label']} {_num(sd['value'])} {sd['unit']}"


def cells(row: dict[str, Any]) -> list[str]:
    if row["status"] != "ok":
        reason = row.get("reason", "")
        value = reason if reason.startswith(row["status"]) else f"{row['status']}: {reason}"
        return [row["name"], row["figure"], value, "", "", "", row["goal_text"], "", row["before"]]
    value = row["text"] if "text" in row else f"{row['value']:.3f}"
    ips = ""
    if "ips_a" in row:
        ips = f"{row['ips_a'] / 1e3:.1f}k / {row['ips_b'] / 1e3:.1f}k"
    met = "" if "met" not in row else ("yes" if row["met"] else "no")
    return [
        row["name"], row["figure"], value, _side_cell(row.get("a")), _side_cell(row.get("b")), ips,
        row["goal_text"], met, row["before"],
    ]  # fmt: skip


HEADER = ["row", "figure", "value", "A", "B", "img/s A / B", "goal", "met", "issue (before)"]


def table(rows: list[dict[str, Any]]) -> str:
    body = [cells(r) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in body)) for i, h in enumerate(HEADER)]
    widths = [min(w, 160) for w in widths]

    def line(cs: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cs, widths)) + " |"

    out = [line(HEADER), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(c) for c in body]
    notes = [f"- {r['name']}: {r['note']}" for r in rows if r.get("note")]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def environment(device: torch.device) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "threads": torch.get_num_threads(),
    }
    if "CUDNN_CONV_WSCAP_DBG" in os.environ:  # the cuDNN workspace cap (MiB) this run's convolutions had
        meta["cudnn_wscap_mib"] = os.environ["CUDNN_CONV_WSCAP_DBG"]
    if device.type == "cuda":
        meta.update(
            gpu=torch.cuda.get_device_name(device),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            memory_gib=torch.cuda.get_device_properties(device).total_memory / 2**30,
        )
    return meta


def write_json(path: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        if isinstance(x, float) and not math.isfinite(x):
            return str(x)
        if isinstance(x, int | float | str | bool) or x is None:
            return x
        return str(x)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(clean({"meta": meta, "rows": rows}), indent=1))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda", help="torch device (default cuda)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, any device, a few seconds per row")
    p.add_argument("--out", type=Path, default=None, help="also write the table as JSON to this file")
    p.add_argument("--rows", default=None, help=f"comma-separated subset of: {','.join(ROW_NAMES)}")
    p.add_argument("--budget-s", type=float, default=420.0, help="total seconds (default 420)")
    p.add_argument(
        "--pytest-reserve-s", type=float, default=90.0,
        help="seconds kept for pytest -m gpu when it is among the rows (default 90)",
    )  # fmt: skip
    return p.parse_args(argv)


def _compiler_caches(tmp_root: Path) -> None:
    # torch.compile (ECCO fused) writes its caches; keep them in the temporary directory, not in $HOME
    base = tmp_root / f"lesstuning-bench-gpu-cache-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(base / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(base / "triton"))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    # called from Python (tests), the budget counts from the call
    args.start = T0 if argv is None else time.monotonic()
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        print(f"error: --device {args.device!r}: {exc}", file=sys.stderr)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "error: --device cuda but torch.cuda.is_available() is False (use --device cpu)", file=sys.stderr
        )
        return 2
    if args.rows:
        wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
        unknown = [r for r in wanted if r not in ROW_NAMES]
        if unknown:
            print(f"error: unknown row(s) {unknown}; rows: {', '.join(ROW_NAMES)}", file=sys.stderr)
            return 2
        specs = [r for r in ROWS if r.name in wanted]
    else:
        specs = list(ROWS)
    sizes = SMOKE if args.smoke else FULL
    threads = torch.get_num_threads()
    if device.type == "cpu" and args.smoke:
        torch.set_num_threads(1)  # tiny sizes: threads only contend (the fast tier shares two cores)
    try:
        return _run(args, device, specs, sizes)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, device: torch.device, specs: list[RowSpec], sizes: Sizes) -> int:
    _compiler_caches(Path(tempfile.gettempdir()))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    reserve = args.pytest_reserve_s if any(r.name == "pytest_gpu" for r in specs) and not args.smoke else 0.0
    meta = environment(device)
    meta.update(smoke=args.smoke, budget_s=args.budget_s, argv=args.argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        bench = Bench(device, sizes, Path(tmp))
        for spec in specs:
            row = run_row(spec, bench, args.budget_s, reserve, args.start)
            rows.append(row)
            shown = cells(row)
            print(
                f"[{time.monotonic() - args.start:6.1f} s] {spec.name}: {shown[2]}"
                + (f"  ({shown[3]} | {shown[4]})" if shown[3] else ""),
                file=sys.stderr,
                flush=True,
            )
            meta["elapsed_s"] = time.monotonic() - args.start
            if args.out is not None:
                write_json(args.out, meta, rows)
        bench.shared.clear()
    meta["elapsed_s"] = time.monotonic() - args.start
    title = meta.get("gpu", str(device))
    print(
        f"bench.gpu on {title} | torch {meta['torch']}"
        + (f" | CUDA {meta['cuda']} cuDNN {meta['cudnn']}" if "cuda" in meta else "")
        + (" | --smoke" if args.smoke else "")
        + f" | {meta['elapsed_s']:.0f} s of {args.budget_s:.0f}"
    )
    print(table(rows))
    for row in rows:
        if row["name"] == "pytest_gpu":
            print(f"pytest -m gpu: {row.get('text') or row.get('reason')}")
            for failure in row.get("failures", []):
                print(f"  {failure}")
    if args.out is not None:
        write_json(args.out, meta, rows)
    return 1 if any(r["status"] == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
