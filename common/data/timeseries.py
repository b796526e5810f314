"""UCI "Individual household electric power consumption": windowed regression sequences."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common.data.bundle import DataBundle, DatasetNotFoundError
from common.data.context import BuildContext
from common.data.loaders import WindowSource

log = logging.getLogger(__name__)

FILE_NAME = "household_power_consumption.txt"
URL = "https://archive.ics.uci.edu/static/public/235/individual+household+electric+power+consumption.zip"
COLUMNS = [
    "Global_active_power",
    "Global_reactive_power",
    "Voltage",
    "Global_intensity",
    "Sub_metering_1",
    "Sub_metering_2",
    "Sub_metering_3",
]
# Friendly names for the resampling period; anything else is passed to pandas as is.
_RULES = {"minute": None, "min": None, "hour": "h", "hourly": "h", "day": "D", "daily": "D"}


def read_power_file(path: str | Path, resample: str | None = "hour") -> pd.DataFrame:
    """Parse the UCI text file into a float32 frame of the 7 numeric columns.

    Missing values (``?``) are forward filled, then back filled (for leading gaps).
    With ``resample`` (``"hour"``, ``"day"`` or a pandas frequency) rows are averaged per
    period, and periods without any reading are filled the same way.

    Returns:
        The frame, indexed by timestamp, in chronological order.
    """
    frame = pd.read_csv(
        path,
        sep=";",
        na_values=["?", ""],
        dtype={"Date": str, "Time": str, **dict.fromkeys(COLUMNS, np.float64)},
        engine="c",
    )
    missing = [c for c in ["Date", "Time", *COLUMNS] if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; is this the UCI household power file?")
    stamps = pd.to_datetime(frame["Date"] + " " + frame["Time"], format="%d/%m/%Y %H:%M:%S")
    values = frame[COLUMNS].set_axis(pd.DatetimeIndex(stamps, name="time"))
    values = values.sort_index().ffill().bfill()
    rule = _RULES.get(str(resample).lower(), resample) if resample is not None else None
    if rule is not None:
        values = values.resample(rule).mean().ffill().bfill()
    return values.astype(np.float32)


def build_household_power(ctx: BuildContext) -> DataBundle:
    """Windows of ``window`` steps of the features, predicting the next ``horizon`` targets.

    Config keys: ``resample`` ("hour"; null: per minute), ``window`` (24), ``horizon`` (1),
    ``target`` ("Global_active_power"), ``features`` (null: all 7 columns),
    ``val_fraction`` (0.1), ``test_fraction`` (0.2). The series is split chronologically
    (train first), standardised with train statistics, and windows never cross splits.
    Targets are standardised too; ``meta["target_mean"]``/``meta["target_std"]`` undo it.
    """
    path = ctx.data_dir / FILE_NAME
    if not path.is_file():
        raise DatasetNotFoundError(
            f"household_power not found: expected file {path} (i.e. <data_dir>/{FILE_NAME}). "
            f"Download the zip from {URL} and unpack {FILE_NAME} into data_dir (automatic "
            "download is not supported for this set)."
        )
    features = list(ctx.get("features", COLUMNS))
    target = str(ctx.get("target", "Global_active_power"))
    unknown = [c for c in [*features, target] if c not in COLUMNS]
    if unknown:
        raise ValueError(f"household_power: unknown columns {unknown}; valid: {COLUMNS}")
    window, horizon = int(ctx.get("window", 24)), int(ctx.get("horizon", 1))
    frame = read_power_file(path, ctx.cfg.get("resample", "hour"))

    n = len(frame)
    n_test = int(round(float(ctx.get("test_fraction", 0.2)) * n))
    n_val = int(round(float(ctx.get("val_fraction", 0.1)) * n))
    bounds = {
        "train": (0, n - n_val - n_test),
        "val": (n - n_val - n_test, n - n_test),
        "test": (n - n_test, n),
    }
    train_rows = frame.iloc[: bounds["train"][1]]
    mean, std = train_rows.mean(), train_rows.std(ddof=0).replace(0.0, 1.0)
    scaled = (frame - mean) / std
    series = torch.from_numpy(scaled[features].to_numpy(np.float32, copy=True)).to(ctx.device)
    targets = torch.from_numpy(scaled[target].to_numpy(np.float32, copy=True)).to(ctx.device)

    sources = {}
    for split, (lo, hi) in bounds.items():
        if split == "val" and n_val == 0:
            continue
        source = WindowSource(series[lo:hi], targets[lo:hi], window, horizon)
        if len(source) == 0:
            raise ValueError(
                f"household_power: the {split} split has {hi - lo} steps, too few for window={window} "
                f"+ horizon={horizon}"
            )
        sources[split] = source

    sizes = {split: len(source) for split, source in sources.items()}
    log.info("household_power: %d steps, windows %s", n, sizes)
    train, val, test = ctx.tensor_loaders(sources)
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=horizon,
        in_channels=len(features),
        image_size=None,
        task="regression",
        name=str(ctx.cfg.get("name", "household_power")),
        meta={
            "features": features,
            "target": target,
            "target_mean": float(mean[target]),
            "target_std": float(std[target]),
            "steps": n,
            "split_sizes": sizes,
        },
    )
