"""Weight pruning by magnitude, per layer, within an output-error budget measured on probes.

For a layer y = P w + b (P: input patches, one row per output position), the output change
caused by new weights w' is P (w - w'). With C = cov(P) and mean patch mu, its energy after
correcting the bias by mu^T (w - w') is (w - w')^T C (w - w'): one covariance matrix per layer
makes every step of the binary search a few small matrix products, whatever the probe count.

Magnitude picks which weights go; the kept weights of each output channel are then re-fitted
by least squares on the same covariance (w'_S = C_SS^-1 C_S: w, damped), so they absorb part
of what the pruned ones did. This is data-free: C comes from synthetic probes. On the demo
model, uniform 50 % sparsity keeps 42.7 % top-1 without the re-fit and 98.7 % with it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hybrid_pruning.graph import PrunableLayer
from hybrid_pruning.techniques import search

_MAX_PATCH_ROWS = 32768  # rows of P sampled for the covariance
_MAX_PATCH_VALUES = 1 << 25  # and at most this many values (256 MiB in float64)
DAMPING = 0.01  # ridge on the re-fit, relative to the mean input variance


@dataclasses.dataclass
class WeightPruningResult:
    name: str
    sparsity: float  # fraction of the layer's weights that are zero after pruning
    relative_error: float  # ||Y - Y_pruned|| / ||Y|| on probes (pre-activation output)
    kernel: np.ndarray  # the new folded kernel (same layout as the layer's)
    bias_delta: np.ndarray | None  # change of the folded bias, or None


@dataclasses.dataclass
class _Stats:
    cov: np.ndarray  # [K, K] covariance of the patches (or second moment if no bias shift)
    mean: np.ndarray  # [K]
    energy: float  # mean squared output of the original layer


def patches(layer: PrunableLayer, x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Rows of input patches in the kernel's flattened (h, w, in) order."""
    if layer.kind == "dense":
        rows = x.reshape(x.shape[0], -1)
    else:
        import tensorflow as tf

        kh, kw = layer.kernel.shape[:2]
        p = tf.image.extract_patches(
            x, sizes=[1, kh, kw, 1], strides=[1, *layer.strides, 1],
            rates=[1, *layer.dilations, 1], padding=layer.padding)
        rows = p.numpy().reshape(-1, p.shape[-1])
    limit = max(1024, min(_MAX_PATCH_ROWS, _MAX_PATCH_VALUES // rows.shape[1]))
    if rows.shape[0] > limit:
        keep = np.random.default_rng(seed).choice(rows.shape[0], limit, replace=False)
        rows = rows[keep]
    return rows.astype(np.float64)


def _stats(layer: PrunableLayer, x: np.ndarray, w2: np.ndarray) -> _Stats:
    p = patches(layer, x)
    mean = p.mean(0)
    second = p.T @ p / len(p)
    # Without a bias to correct, the mean shift is part of the error.
    cov = second - np.outer(mean, mean) if layer.can_shift_bias else second
    y = p @ w2 + layer.folded_bias
    return _Stats(cov, mean, float(np.mean(y * y)) * w2.shape[1])


def block_scores(kernel_2d: np.ndarray, block_size: int) -> np.ndarray:
    """L2 norm of each block of `block_size` consecutive output channels sharing an input
    index, broadcast back to every weight of the block: kernel_2d is [K, out_c]."""
    k, out_c = kernel_2d.shape
    nb = -(-out_c // block_size)
    padded = np.zeros((k, nb * block_size))
    padded[:, :out_c] = np.abs(kernel_2d)
    norms = np.sqrt(np.square(padded.reshape(k, nb, block_size)).sum(-1))
    return np.repeat(norms, block_size, axis=1)[:, :out_c]


def refit(cov: np.ndarray, w2: np.ndarray, keep: np.ndarray, damping: float = DAMPING
          ) -> np.ndarray:
    """Least-squares re-fit of the kept weights of each output channel (columns of w2)."""
    ridge = damping * max(float(np.mean(np.diag(cov))), 1e-12)
    target = cov @ w2  # [K, out_c]
    new = np.zeros_like(w2)
    for c in range(w2.shape[1]):
        s = np.flatnonzero(keep[:, c])
        if s.size:
            a = cov[np.ix_(s, s)] + ridge * np.eye(s.size)
            new[s, c] = np.linalg.solve(a, target[s, c])
    return new


class LayerPruner:
    """Evaluates magnitude pruning of one layer at any sparsity, from its probe statistics."""

    def __init__(self, layer: PrunableLayer, x: np.ndarray, block_size: int = 1,
                 reconstruct: bool = True):
        self.layer = layer
        w = layer.folded_kernel.astype(np.float64)
        self.shape = w.shape
        self.w2 = w.reshape(-1, w.shape[-1])  # [K, out_c]
        self.stats = _stats(layer, x, self.w2)
        self.scores = block_scores(self.w2, block_size)
        self.reconstruct = reconstruct

    def evaluate(self, sparsity: float) -> tuple[np.ndarray, float]:
        """(new [K, out_c] folded kernel, relative output error) at this sparsity."""
        if sparsity <= 0:
            return self.w2, 0.0
        keep = self.scores > np.quantile(self.scores, sparsity, method="lower")
        new = refit(self.stats.cov, self.w2, keep) if self.reconstruct else np.where(
            keep, self.w2, 0.0)
        d = self.w2 - new
        err = float(np.sum((self.stats.cov @ d) * d))
        return new, float(np.sqrt(max(err, 0.0) / max(self.stats.energy, 1e-30)))

    def result(self, new: np.ndarray, err: float) -> WeightPruningResult:
        bias_delta = self.stats.mean @ (self.w2 - new) if self.layer.can_shift_bias else None
        return WeightPruningResult(self.layer.name, float(np.mean(new == 0)), err,
                                   new.reshape(self.shape).astype(np.float32),
                                   None if bias_delta is None else bias_delta.astype(np.float32))


def prune_layer(layer: PrunableLayer, x: np.ndarray, error_budget: float,
                max_sparsity: float = 0.99, block_size: int = 1, iterations: int = 10,
                reconstruct: bool = True) -> WeightPruningResult:
    """The largest magnitude-percentile sparsity whose relative output error on the probe
    activations `x` stays within `error_budget` (binary search over the percentile)."""
    pruner = LayerPruner(layer, x, block_size, reconstruct)
    best, best_err = search.largest_within_budget(
        pruner.evaluate, lambda c: c[1], max_sparsity, error_budget, iterations)
    return pruner.result(best, best_err)


def prune_weights(layers: list[PrunableLayer], inputs: list[np.ndarray], error_budget: float,
                  max_sparsity: float = 0.99, block_size: int = 1, reconstruct: bool = True,
                  progress=None) -> list[WeightPruningResult]:
    """Prunes every layer in place (zeros in its kernel) and returns what was done."""
    results = []
    for layer, x in zip(layers, inputs):
        r = prune_layer(layer, x, error_budget, max_sparsity,
                        block_size if layer.kind == "conv2d" else 1, reconstruct=reconstruct)
        layer.set_folded(r.kernel, r.bias_delta)
        results.append(r)
        if progress is not None:
            progress.update(1)
    return results
