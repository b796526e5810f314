"""The shapes data set: determinism, splits, the label rule, the rasterised geometry, speed, a launch run."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

import common.data.shapes as shapes
from common.data import build_data
from common.data.shapes import CLASSES, Scenes, ShapesSpec, draw_scenes, generate, render
from launch.run import run
from tests.conftest import compose_config

SMALL = {"train_size": 300, "val_size": 100, "test_size": 100}


def config(**overrides) -> dict:
    cfg = {"name": "shapes", "image_size": 32, "batch_size": 50, "eval_batch_size": 100, **SMALL}
    cfg.update(overrides)
    return cfg


def split_tensors(bundle) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    loaders = {"train": bundle.train, "val": bundle.val, "test": bundle.test}
    return {
        name: (loader.source.x, loader.source.y) for name, loader in loaders.items() if loader is not None
    }


def one_shape(kind: int, angle: float = 0.3, radius: float = 0.35, size: int = 128) -> np.ndarray:
    """Coverage (size, size) in [0, 1] of one shape of class ``kind``: white on black, no noise, no distractors."""
    scenes = Scenes(
        labels=np.array([kind]),
        kinds=np.array([[kind]]),
        active=np.array([[True]]),
        front=np.array([[False]]),
        centre=np.array([[[0.5, 0.5]]]),
        radius=np.array([[radius]]),
        angle=np.array([[angle]]),
        colour=np.ones((1, 1, 3)),
        background=np.array([0]),
        bg_colours=np.zeros((1, 2, 3)),
        bg_angle=np.zeros(1),
        bg_freq=np.ones(1),
        bg_phase=np.zeros(1),
        texture=np.zeros((1, 3, 5, 5)),
    )
    x = render(scenes, size, np.random.default_rng(0), noise=0.0)
    assert (x[0, 0] == x[0, 1]).all() and (x[0, 0] == x[0, 2]).all()
    return x[0, 0].astype(np.float64) / 255


def _lens(r1: float, r2: float, d: float) -> float:
    """Area of the intersection of two discs of radii r1, r2 whose centres are d apart."""
    a1 = r1**2 * math.acos((d**2 + r1**2 - r2**2) / (2 * d * r1))
    a2 = r2**2 * math.acos((d**2 + r2**2 - r1**2) / (2 * d * r2))
    return a1 + a2 - 0.5 * math.sqrt((-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2))


# the area of each class in local units (radius 1), from elementary geometry
_SHAFT_LEN = 1 + shapes._ARROW_HEAD_BASE + 0.05
AREAS = {
    "circle": math.pi * shapes._CIRCLE_R**2,
    "square": (2 * shapes._SQUARE_HALF) ** 2,
    "triangle": 3 * math.sqrt(3) / 4 * shapes._TRIANGLE_R**2,
    "hexagon": 3 * math.sqrt(3) / 2 * shapes._HEXAGON_R**2,
    "star": 5 * shapes._STAR_R * shapes._STAR_INNER * math.sin(math.pi / 5),
    "plus": 2 * (2 * shapes._PLUS_LONG) * (2 * shapes._PLUS_SHORT) - (2 * shapes._PLUS_SHORT) ** 2,
    "ring": math.pi
    * ((shapes._RING_MID + shapes._RING_HALF) ** 2 - (shapes._RING_MID - shapes._RING_HALF) ** 2),
    "crescent": math.pi * shapes._CRESCENT_R**2
    - _lens(shapes._CRESCENT_R, shapes._CRESCENT_CUT_R, shapes._CRESCENT_SHIFT),
    "arrow": _SHAFT_LEN * 2 * shapes._ARROW_SHAFT_HALF
    + (1 - shapes._ARROW_HEAD_BASE) * shapes._ARROW_HEAD_HALF
    - 0.05 * 2 * shapes._ARROW_SHAFT_HALF,
    "ellipse": math.pi * shapes._ELLIPSE_A * shapes._ELLIPSE_B,
}
# rotations (radians) that map each class onto itself; None: no rotation below a full turn does
SYMMETRY = {
    "circle": 1.0,
    "square": math.pi / 2,
    "triangle": 2 * math.pi / 3,
    "hexagon": math.pi / 3,
    "star": 2 * math.pi / 5,
    "plus": math.pi / 2,
    "ring": 1.0,
    "crescent": None,
    "arrow": None,
    "ellipse": math.pi,
}


def test_same_data_seed_same_tensors_other_seed_differs():
    a = split_tensors(build_data(config(data_seed=3), data_dir="unused", seed=0))
    # the run seed drives only the train order, never the data
    b = split_tensors(build_data(config(data_seed=3), data_dir="unused", seed=7))
    c = split_tensors(build_data(config(data_seed=4), data_dir="unused", seed=0))
    for split in ("train", "val", "test"):
        assert torch.equal(a[split][0], b[split][0]) and torch.equal(a[split][1], b[split][1])
        assert not torch.equal(a[split][0], c[split][0])


def test_shapes_dtypes_balance_and_ranges():
    bundle = build_data(config(), data_dir="unused", seed=0)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 3, 32)
    assert bundle.meta["classes"] == list(CLASSES)
    for name, (x, y) in split_tensors(bundle).items():
        assert x.dtype == torch.uint8 and x.shape == (SMALL[f"{name}_size"], 3, 32, 32)
        assert y.dtype == torch.int64
        assert torch.bincount(y, minlength=10).tolist() == [len(y) // 10] * 10
        # the pixels use most of the range, and no image is flat
        assert x.min() < 20 and x.max() > 235
        assert (x.flatten(1).float().std(dim=1) > 5).all()
    # standardised with the train split's statistics
    xb = torch.cat([xb for xb, _ in bundle.train.epoch_iter(0)])
    assert xb.mean(dim=(0, 2, 3)).abs().max() < 1e-3
    assert (xb.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-2


def test_splits_share_no_image():
    tensors = split_tensors(build_data(config(), data_dir="unused", seed=0))
    seen = {name: {bytes(img.numpy()) for img in x} for name, (x, _) in tensors.items()}
    assert len(seen["train"]) == SMALL["train_size"]
    assert (
        not seen["train"] & seen["val"]
        and not seen["train"] & seen["test"]
        and not seen["val"] & seen["test"]
    )


def test_resolution_changes_pixels_not_scenes():
    x32, y32 = generate(50, seed=1, size=32)
    x64, y64 = generate(50, seed=1, size=64)
    assert np.array_equal(y32, y64) and x64.shape == (50, 3, 64, 64)
    # without noise, the 64-pixel render box-filtered to 32 is the 32-pixel render up to edge anti-aliasing
    quiet = ShapesSpec(noise=0.0)
    a = generate(20, seed=1, size=32, spec=quiet)[0].astype(np.float64)
    b = generate(20, seed=1, size=64, spec=quiet)[0].astype(np.float64)
    b = b.reshape(20, 3, 32, 2, 32, 2).mean(axis=(3, 5))
    assert np.abs(a - b).mean() < 2.0


def test_label_is_the_largest_shape():
    spec = ShapesSpec()
    scenes = draw_scenes(2000, np.random.default_rng(0), spec)
    assert np.array_equal(scenes.kinds[:, 0], scenes.labels)
    distractor = scenes.active[:, 1:]
    assert (scenes.kinds[:, 1:] != scenes.labels[:, None])[distractor].all()
    ratio = scenes.radius[:, 1:] / scenes.radius[:, :1]
    assert ratio.max() <= spec.distractor_scale[1] and ratio.min() >= spec.distractor_scale[0]
    # 0, 1 and 2 distractors all occur, about equally often, in front of and behind the main shape
    counts = np.bincount(distractor.sum(1), minlength=3) / 2000
    assert np.allclose(counts, 1 / 3, atol=0.05)
    assert 0.4 < scenes.front[:, 1:][distractor].mean() < 0.6
    # the main shape's centre leaves room for most of it inside the frame
    margin = np.minimum(scenes.centre[:, 0], 1 - scenes.centre[:, 0]).min(axis=1)
    assert (margin >= 0.9 * scenes.radius[:, 0] - 1e-9).all()
    with pytest.raises(ValueError, match="distractor_scale"):
        ShapesSpec(distractor_scale=(0.5, 1.0))


@pytest.mark.parametrize("kind", range(len(CLASSES)), ids=CLASSES)
def test_rendered_area_and_symmetry(kind):
    name = CLASSES[kind]
    size, radius = 128, 0.35
    mask = one_shape(kind, radius=radius, size=size)
    # the soft edge is one pixel wide, so coverage sums to the area within a fraction of the perimeter
    expected = AREAS[name] * (radius * size) ** 2
    assert mask.sum() == pytest.approx(expected, rel=0.005)
    turn = SYMMETRY[name]
    turned = one_shape(kind, angle=0.3 + (turn or math.pi / 2), radius=radius, size=size)
    change = np.abs(mask - turned).sum() / mask.sum()
    if turn is None:
        assert change > 0.2
    else:
        assert change < 0.005


def test_classes_differ_pairwise():
    # the same pose, two classes: the masks differ by a clear fraction of their area
    masks = [one_shape(kind, size=64) for kind in range(len(CLASSES))]
    for i in range(len(masks)):
        for j in range(i):
            assert np.abs(masks[i] - masks[j]).sum() > 0.1 * min(masks[i].sum(), masks[j].sum()), (i, j)


def test_fewer_classes_and_no_val():
    bundle = build_data(config(num_classes=4, val_size=0, train_size=40), data_dir="unused", seed=0)
    assert bundle.val is None and bundle.num_classes == 4
    assert set(bundle.train.source.y.tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="num_classes"):
        build_data(config(num_classes=11), data_dir="unused", seed=0)


def test_generation_is_fast():
    start = time.perf_counter()
    generate(1000, seed=0)
    # about 0.3 s on one core; generous for a loaded machine
    assert time.perf_counter() - start < 5.0


def test_launch_runs_on_shapes(tmp_path):
    cfg = compose_config(
        "dataset=shapes",
        "network=lenet5",
        "dataset.train_size=300",
        "dataset.val_size=100",
        "dataset.test_size=100",
        output_dir=tmp_path / "run",
    )
    results = run(cfg)
    assert 0.0 <= results["test_acc"] <= 1.0 and math.isfinite(results["train_loss"])
    assert results["steps"] == 3
