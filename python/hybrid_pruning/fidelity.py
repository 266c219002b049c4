"""How closely a reduced model follows the original on the probe inputs."""

from __future__ import annotations

import numpy as np


def kl_divergence(reference: np.ndarray, out: np.ndarray) -> float | None:
    """Mean KL(reference || out) over the batch when the outputs are probability
    distributions (rows of a 2-D output summing to 1), else None."""
    if reference.ndim == 2 and np.all(reference >= 0) and np.allclose(reference.sum(1), 1,
                                                                        atol=1e-3):
        p, q = np.clip(reference, 1e-7, 1), np.clip(out, 1e-7, 1)
        return float(np.mean(np.sum(p * np.log(p / q), axis=1)))
    return None


def compare(reference: np.ndarray, out: np.ndarray) -> dict:
    """Relative max error, top-1 agreement and (for distributions) KL divergence."""
    out = out.reshape(reference.shape)
    scale = max(float(np.abs(reference).max()), 1e-12)
    result = {"max_abs_output_error_relative": float(np.abs(out - reference).max() / scale)}
    if reference.ndim == 2 and reference.shape[1] > 1:
        result["top1_agreement"] = float(np.mean(out.argmax(1) == reference.argmax(1)))
        kl = kl_divergence(reference, out)
        if kl is not None:
            result["kl_divergence"] = kl
    return result
