"""Activation pruning by magnitude: input activations below a per-channel threshold become
zeros that HybridSparseConv2D skips at run time (with their whole weight column).

Per layer, one quantile q is searched: channel c's threshold is the q-quantile of |x_c| over
its nonzero probe activations, so every channel loses the same share of its small values
whatever its scale. The layer's output error is measured on the sampled probe patches
themselves (thresholding is not linear, so no covariance shortcut here); thresholding a patch
row is thresholding the input, since each column belongs to one input channel and padding
zeros stay zero.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hybrid_pruning import statistics
from hybrid_pruning.graph import PrunableLayer
from hybrid_pruning.techniques import search


@dataclasses.dataclass
class ActivationPruningResult:
    name: str
    thresholds: np.ndarray | None  # [in_channels] float32; None when nothing is pruned
    activation_sparsity: float  # share of input activations that are zero or below threshold
    natural_sparsity: float  # share that is exactly zero already (e.g. after ReLU)
    relative_error: float


def channel_thresholds(x: np.ndarray, q: float) -> np.ndarray:
    """Per channel (last axis), the q-quantile of the nonzero magnitudes."""
    a = np.abs(x.reshape(-1, x.shape[-1])).astype(np.float64)
    masked = np.where(a > 0, a, np.nan)
    with np.errstate(all="ignore"):
        t = np.nanquantile(masked, q, axis=0, method="lower") if q > 0 else np.zeros(a.shape[1])
    return np.nan_to_num(t, nan=0.0).astype(np.float32)


def threshold(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < t, 0.0, x).astype(np.float32)


class LayerThresholder:
    """Evaluates activation thresholds of one layer at any quantile, on its probe patches."""

    def __init__(self, layer: PrunableLayer, x):
        """`x`: the layer's input on the probes, as a statistics.LayerSample or an array."""
        sample = statistics.as_sample(layer, x)
        self.layer = layer
        self.channels = int(layer.kernel.shape[-2])
        self.w2 = layer.folded_kernel.reshape(-1, layer.kernel.shape[-1]).astype(np.float32)
        self.p = sample.rows
        self.values = sample.channel_values(self.channels, spatial=True)
        y = self.p @ self.w2 + layer.folded_bias
        self.energy = max(float(np.sum(y.astype(np.float64) ** 2)), 1e-30)
        self.natural = sample.natural_sparsity

    def evaluate(self, q: float) -> tuple[np.ndarray | None, float, float]:
        """(thresholds or None, relative output error, activation sparsity) at quantile q."""
        if q <= 0:
            return None, 0.0, self.natural
        t = channel_thresholds(self.values, q)
        cut = threshold(self.p, np.tile(t, self.p.shape[1] // self.channels))
        d = (self.p - cut) @ self.w2
        err = float(np.sqrt(np.sum(d.astype(np.float64) ** 2) / self.energy))
        sparsity = float(np.mean(threshold(self.values, t) == 0))
        return (t if np.any(t > 0) else None), err, sparsity


def prune_layer(layer: PrunableLayer, x, error_budget: float,
                max_quantile: float = 0.95, iterations: int = 8) -> ActivationPruningResult:
    th = LayerThresholder(layer, x)
    thresholds, err, sparsity = search.largest_within_budget(
        th.evaluate, lambda c: c[1], max_quantile, error_budget, iterations)
    return ActivationPruningResult(layer.name, thresholds, sparsity, th.natural, err)


def prune_activations(layers: list[PrunableLayer], inputs: list,
                      error_budget: float, progress=None) -> list[ActivationPruningResult]:
    """Thresholds for every Conv2D layer (Dense layers run as builtin ops and get none)."""
    results = []
    for layer, x in zip(layers, inputs):
        if layer.kind == "conv2d" and error_budget > 0:
            results.append(prune_layer(layer, x, error_budget))
        else:
            natural = (x.natural_sparsity if isinstance(x, statistics.LayerSample)
                       else float(np.mean(np.asarray(x) == 0)))
            results.append(ActivationPruningResult(layer.name, None, natural, natural, 0.0))
        if progress is not None:
            progress.update(1)
    return results
