"""Benchmark: our training engine against a bare hand-written PyTorch loop, same model, data and seed.

    .venv/bin/python bench/engine.py [--network lenet5] [--epochs 3] [--repeats 3]

Both loops train the same model from the same initial weights on the same batches (the tensor-served digits
set, resized to 32x32 for conv nets) and evaluate on the validation split after every epoch; ours also keeps
running sums, checks the loss is finite, logs metrics.jsonl and writes an atomic checkpoint at each epoch end.
A third loop is the bare loop fed by torch's DataLoader over a TensorDataset (what a paper repo usually does).
Prints images/s of each and the time ratios (target for ours / bare: <= 1.10). Median over repeats.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.checkpoint import CheckpointManager  # noqa: E402
from common.data import build_data  # noqa: E402
from common.engine import RunContext, Trainer, TrainerOptions, evaluate  # noqa: E402
from common.logging import RunLogger, format_table  # noqa: E402
from common.models import build_model, network_info  # noqa: E402
from common.seeding import seed_everything  # noqa: E402

DIGITS = {"name": "digits", "batch_size": 64, "eval_batch_size": 512, "augment": False}


def make(network: str, seed: int):
    seed_everything(seed)
    info = network_info(network)
    size = info.min_input_size if info.min_input_size and info.min_input_size > 8 else None
    data = build_data(DIGITS, data_dir="data", seed=seed, device="cpu", image_size=size)
    model = build_model(network, num_classes=10, in_channels=1, image_size=data.image_size)
    return model, data


def bare_loop(model, data, epochs: int, lr: float) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for x, y in data.train.epoch_iter(epoch):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        evaluate(model, data.val, prefix="val")
    return time.perf_counter() - start


def dataloader_loop(model, data, epochs: int, lr: float) -> float:
    xs, ys = zip(*data.train.epoch_iter(0))
    ds = torch.utils.data.TensorDataset(torch.cat(xs), torch.cat(ys))
    loader = torch.utils.data.DataLoader(ds, batch_size=data.train.batch_size, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        evaluate(model, data.val, prefix="val")
    return time.perf_counter() - start


def our_loop(model, data, epochs: int, lr: float) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        logger = RunLogger(tmp)
        ctx = RunContext(
            cfg=None, output_dir=Path(tmp), device=torch.device("cpu"), logger=logger,
            checkpoints=CheckpointManager(tmp), progress=False,
        )  # fmt: skip
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        options = TrainerOptions(
            epochs=epochs, checkpoint_every_min=10.0, checkpoint_min_interval_s=2.0, resume=False
        )
        trainer = Trainer(model, opt, data, ctx, options)
        start = time.perf_counter()
        trainer._try_resume()
        trainer.model.train()
        while trainer.epoch < trainer.epochs:
            trainer._train_epoch()
            trainer._end_epoch()
        elapsed = time.perf_counter() - start
        logger.finish()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--network", default="lenet5")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    model, data = make(args.network, seed=0)
    init = copy.deepcopy(model.state_dict())
    images = data.train.num_samples * args.epochs
    loops = {
        "bare (tensor batches)": bare_loop,
        "ours (common.engine)": our_loop,
        "bare (torch DataLoader)": dataloader_loop,
    }
    times: dict[str, list[float]] = {k: [] for k in loops}
    our_acc = bare_acc = None
    our_loop(model, data, 1, args.lr)  # warm-up: first-call costs (allocator, kernels) out of the timings
    for _ in range(args.repeats):
        for name, loop in loops.items():
            model.load_state_dict(init)
            seed_everything(0)
            times[name].append(loop(model, data, args.epochs, args.lr))
            if name.startswith("ours"):
                our_acc = evaluate(model, data.test)["test_acc"]
            elif name == "bare (tensor batches)":
                bare_acc = evaluate(model, data.test)["test_acc"]
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["bare (tensor batches)"]
    rows = [
        {"loop": k, "median_s": v, "images_per_s": images / v, "ratio_vs_bare": v / base}
        for k, v in med.items()
    ]
    print(
        f"network={args.network} data=digits epochs={args.epochs} repeats={args.repeats} threads={torch.get_num_threads()}"
    )
    print(format_table(rows, floatfmt=".3f"))
    print(f"test_acc after training: ours={our_acc:.4f} bare={bare_acc:.4f} (same init, same batches)")
    ratio = med["ours (common.engine)"] / base
    print(f"engine overhead ratio ours/bare = {ratio:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
