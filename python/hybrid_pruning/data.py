"""Labelled data for evaluation and for training the demo model; never used by pruning.

The techniques are data-free: only train_demo and evaluate import this module, and a test
runs the whole pruning pipeline with it made unimportable.
"""

from __future__ import annotations

import numpy as np

DEMO_INPUT_SIZE = 16
SPLIT_SEED = 0
TEST_FRACTION = 0.25


def digits_images(images_8x8: np.ndarray) -> np.ndarray:
    """scikit-learn's 8x8 digits (0..16) -> float32 [N, 16, 16, 1] in [0, 1], nearest upscale."""
    x = np.asarray(images_8x8, np.float32).reshape(-1, 8, 8) / 16.0
    factor = DEMO_INPUT_SIZE // 8
    x = np.repeat(np.repeat(x, factor, axis=1), factor, axis=2)
    return x[..., None]


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed stratified split: x_train, y_train, x_test, y_test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images, digits.target, test_size=TEST_FRACTION, stratify=digits.target,
        random_state=SPLIT_SEED)
    return (digits_images(x_train), y_train.astype(np.int64), digits_images(x_test),
            y_test.astype(np.int64))


def load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """A user's labelled set: arrays `x` (float32 NHWC) and `y` (integer labels)."""
    try:
        with np.load(path) as f:
            missing = [k for k in ("x", "y") if k not in f.files]
            if missing:
                raise ValueError(f"{path}: missing array(s) {missing}; found {f.files}")
            x, y = f["x"].astype(np.float32), f["y"].astype(np.int64).reshape(-1)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read a labelled npz: {e}") from e
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{path}: x has {x.shape[0]} samples but y has {y.shape[0]}")
    return x, y
