"""Labelled data for evaluation and for training the demo model; never used by pruning.

The techniques are data-free: only train_demo and evaluate import this module, and a test
runs the whole pruning pipeline with it made unimportable.
"""

from __future__ import annotations

import numpy as np

DEMO_INPUT_SIZE = 16
SPLIT_SEED = 0
TEST_FRACTION = 0.25


def digits_images(images_8x8: np.ndarray, size: int = DEMO_INPUT_SIZE) -> np.ndarray:
    """scikit-learn's 8x8 digits (0..16) -> float32 [N, size, size, 1] in [0, 1]: nearest
    upscale to the demo's 16x16 (kept so the committed demo stays reproducible), bilinear to
    larger sizes (smooth strokes, as a camera would give)."""
    x = np.asarray(images_8x8, np.float32).reshape(-1, 8, 8) / 16.0
    if size == DEMO_INPUT_SIZE:
        factor = DEMO_INPUT_SIZE // 8
        return np.repeat(np.repeat(x, factor, axis=1), factor, axis=2)[..., None]
    from scipy import ndimage

    x = ndimage.zoom(x, (1, size / 8, size / 8), order=1, mode="nearest", grid_mode=True)
    return np.clip(x, 0.0, 1.0)[..., None]


def digits_split(size: int = DEMO_INPUT_SIZE
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed stratified split at size x size: x_train, y_train, x_test, y_test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images, digits.target, test_size=TEST_FRACTION, stratify=digits.target,
        random_state=SPLIT_SEED)
    return (digits_images(x_train, size), y_train.astype(np.int64),
            digits_images(x_test, size), y_test.astype(np.int64))


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
