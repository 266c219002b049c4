"""Weight pruning by magnitude, per layer, within an output-error budget measured on probes.

For a layer y = P w + b (P: input patches, one row per output position), the output change
caused by new weights w' is P (w - w'). With C = cov(P) and mean patch mu, its energy after
correcting the bias by mu^T (w - w') is (w - w')^T C (w - w'): one covariance matrix per layer
makes every step of the binary search a few small matrix products, whatever the probe count.

Magnitude picks which weights go, measured in units of the output a weight moves: |w| times
the spread of its input on the probes (sqrt C_kk), so that a small weight on a large input is
not taken for an unimportant one: a layer's inputs differ in scale. Only where the probes
stand for real inputs (matched to the model's BatchNorm statistics): on synthetic images the
spreads mislead (benchmarks/results/architectures.md, digits_cnn_nobn). The kept weights of each
output channel are then re-fitted by least squares on the same covariance
(w'_S = C_SS^-1 C_S: w, damped), so they absorb part of what the pruned ones did. This is
data-free: C comes from synthetic probes. On the demo model, uniform 50 % sparsity keeps
42.7 % top-1 without the re-fit and 98.7 % with it (plain |w|, before the input scaling).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence

import numpy as np

from hybrid_pruning import statistics
from hybrid_pruning.graph import PrunableLayer
from hybrid_pruning.techniques import search

DAMPING = 0.01  # ridge on the re-fit, relative to the mean input variance


@dataclasses.dataclass
class WeightPruningResult:
    name: str
    sparsity: float  # fraction of the layer's weights that are zero after pruning
    relative_error: float  # ||Y - Y_pruned|| / ||Y|| on probes (pre-activation output)
    kernel: np.ndarray  # the new folded kernel (same layout as the layer's)
    bias_delta: np.ndarray | None  # change of the folded bias, or None
    block_size: int = 1  # output channels sharing one sparsity pattern


class Moments:
    """C = cov(P) (or E[p p^T] where no bias can absorb the mean shift). Held as a [K, K]
    matrix, or implicitly as the scaled rows R (C = R^T R) when there are fewer rows than
    columns: a Dense layer on a flattened map has K in the tens of thousands against one row
    per probe, and its [K, K] matrix would cost gigabytes for rank <= rows."""

    def __init__(self, matrix: np.ndarray | None = None, rows: np.ndarray | None = None):
        self.matrix, self.rows = matrix, rows
        self.size = matrix.shape[0] if matrix is not None else rows.shape[1]
        self._f32 = None

    @classmethod
    def of(cls, p: np.ndarray, centre: bool) -> "Moments":
        r = p - p.mean(0) if centre else p
        r = r / np.sqrt(len(p))
        return cls(matrix=r.T @ r) if r.shape[1] <= r.shape[0] else cls(rows=r)

    def mul(self, v: np.ndarray) -> np.ndarray:
        return self.matrix @ v if self.matrix is not None else self.rows.T @ (self.rows @ v)

    def mul32(self, v: np.ndarray) -> np.ndarray:
        if self._f32 is None:
            self._f32 = (self.matrix if self.matrix is not None else self.rows).astype(np.float32)
        return self._f32 @ v if self.matrix is not None else self._f32.T @ (self._f32 @ v)

    def diag(self) -> np.ndarray:
        return np.diag(self.matrix) if self.matrix is not None else np.sum(self.rows ** 2, 0)

    def trace(self) -> float:
        return float(np.sum(self.diag()))

    def block(self, s: np.ndarray) -> np.ndarray:
        if self.matrix is not None:
            return self.matrix[np.ix_(s, s)]
        r = self.rows[:, s]
        return r.T @ r


@dataclasses.dataclass
class _Stats:
    cov: Moments  # of the patches (second moment if no bias shift)
    mean: np.ndarray  # [K]
    energy: float  # mean squared output of the original layer


def _stats(layer: PrunableLayer, sample: statistics.LayerSample, w2: np.ndarray) -> _Stats:
    p = sample.rows.astype(np.float64)
    # Without a bias to correct, the mean shift is part of the error.
    cov = Moments.of(p, centre=layer.can_shift_bias)
    y = p @ w2 + layer.folded_bias
    return _Stats(cov, p.mean(0), float(np.mean(y * y)) * w2.shape[1])


def block_scores(kernel_2d: np.ndarray, block_size: int, in_c: int | None = None) -> np.ndarray:
    """L2 norm of each block of `block_size` consecutive output channels sharing an input
    index, broadcast back to every weight of the block: kernel_2d is [K, out_c]. With `in_c`
    (the conv's input channels; K = taps * in_c) a block also spans a group of 4 consecutive
    input channels of one tap: the int8 op's unit (sparse_conv.h)."""
    k, out_c = kernel_2d.shape
    group = 4 if in_c is not None else 1
    in_c = in_c or k
    taps, groups, nb = k // in_c, -(-in_c // group), -(-out_c // block_size)
    padded = np.zeros((taps, groups * group, nb * block_size))
    padded[:, :in_c, :out_c] = np.abs(kernel_2d).reshape(taps, in_c, out_c)
    norms = np.sqrt(np.square(padded.reshape(taps, groups, group, nb, block_size))
                    .sum(axis=(2, 4)))
    full = np.repeat(np.repeat(norms, group, axis=1), block_size, axis=2)
    return full[:, :in_c, :out_c].reshape(k, out_c)


# Up to this many weights per output channel the re-fit solves each channel directly; above
# it (3x3x256 and wider) one preconditioned conjugate-gradient run serves every channel.
_DIRECT_MAX = 1024


def refit(cov, w2: np.ndarray, keep: np.ndarray, damping: float = DAMPING,
          target: np.ndarray | None = None) -> np.ndarray:
    """Least-squares re-fit of the kept weights of each output channel (columns of w2);
    `cov`: Moments or a [K, K] matrix. `target`: the right-hand side (default cov w2, i.e.
    reproduce w2's outputs on the same inputs)."""
    cov = cov if isinstance(cov, Moments) else Moments(matrix=cov)
    ridge = damping * max(float(np.mean(cov.diag())), 1e-12)
    target = cov.mul(w2) if target is None else target  # [K, out_c]
    if cov.size > _DIRECT_MAX:
        return _refit_cg(cov, ridge, target, keep, w2)
    new = np.zeros_like(w2)
    for c in range(w2.shape[1]):
        s = np.flatnonzero(keep[:, c])
        if s.size:
            a = cov.block(s) + ridge * np.eye(s.size)
            new[s, c] = np.linalg.solve(a, target[s, c])
    return new


def _refit_cg(cov: Moments, ridge: float, target: np.ndarray, keep: np.ndarray,
              start: np.ndarray, iterations: int = 60, tolerance: float = 1e-3) -> np.ndarray:
    """The same solves as refit, for all channels at once: Jacobi-preconditioned conjugate
    gradients on (cov + ridge I) restricted to each column's kept rows, so each iteration
    is one [K, K] x [K, out_c] product (float32) instead of out_c factorisations of
    [k, k] blocks. Starts from the unpruned weights, which are close."""
    m = keep.astype(np.float32)
    b = (target * keep).astype(np.float32)
    dinv = (1.0 / (cov.diag() + ridge)).astype(np.float32)[:, None]
    x = (start * keep).astype(np.float32)
    r = b - m * (cov.mul32(x) + ridge * x)
    z = dinv * r
    p = z.copy()
    rz = np.sum(r * z, 0)
    stop = tolerance * np.maximum(np.linalg.norm(b, axis=0), 1e-30)
    for _ in range(iterations):
        ap = m * (cov.mul32(p) + ridge * p)
        alpha = rz / np.maximum(np.sum(p * ap, 0), 1e-30)
        x += alpha * p
        r -= alpha * ap
        if np.all(np.linalg.norm(r, axis=0) <= stop):
            break
        z = dinv * r
        rz_new = np.sum(r * z, 0)
        p = z + (rz_new / np.maximum(rz, 1e-30)) * p
        rz = rz_new
    return (x * m).astype(np.float64)


class LayerPruner:
    """Evaluates magnitude pruning of one layer at any sparsity, from its probe statistics."""

    def __init__(self, layer: PrunableLayer, x, block_size: int = 1,
                 reconstruct: bool = True, input_scaled: bool = True,
                 input_groups: bool = False):
        """`x`: the layer's input on the probes, as a statistics.LayerSample or an array;
        `input_scaled`: magnitudes times their inputs' spread (else plain |w|);
        `input_groups`: blocks also span a group of 4 input channels of a tap (the int8
        op's unit)."""
        self.layer = layer
        w = layer.folded_kernel.astype(np.float64)
        self.shape = w.shape
        self.w2 = w.reshape(-1, w.shape[-1])  # [K, out_c]
        self.stats = _stats(layer, statistics.as_sample(layer, x), self.w2)
        self.block_size = block_size
        # Each weight's magnitude in units of the output it moves: times its input's spread.
        self._scored = self.w2 * np.sqrt(np.maximum(self.stats.cov.diag(), 0.0))[:, None] \
            if input_scaled else self.w2
        self._in_c = int(w.shape[-2]) if input_groups and w.ndim == 4 else None
        self._scores = {block_size: block_scores(self._scored, block_size, self._in_c)}
        self.reconstruct = reconstruct

    def evaluate(self, sparsity: float, block_size: int | None = None
                 ) -> tuple[np.ndarray, float]:
        """(new [K, out_c] folded kernel, relative output error) at this sparsity, in blocks
        of `block_size` output channels (default: the pruner's)."""
        if sparsity <= 0:
            return self.w2, 0.0
        block = block_size or self.block_size
        if block not in self._scores:
            self._scores[block] = block_scores(self._scored, block, self._in_c)
        scores = self._scores[block]
        keep = scores > np.quantile(scores, sparsity, method="lower")
        new = refit(self.stats.cov, self.w2, keep) if self.reconstruct else np.where(
            keep, self.w2, 0.0)
        d = self.w2 - new
        err = float(np.sum(self.stats.cov.mul(d) * d))
        return new, float(np.sqrt(max(err, 0.0) / max(self.stats.energy, 1e-30)))

    def result(self, new: np.ndarray, err: float) -> WeightPruningResult:
        bias_delta = self.stats.mean @ (self.w2 - new) if self.layer.can_shift_bias else None
        return WeightPruningResult(self.layer.name, float(np.mean(new == 0)), err,
                                   new.reshape(self.shape).astype(np.float32),
                                   None if bias_delta is None else bias_delta.astype(np.float32))


# What SequentialRefit keeps of earlier re-fits, at most (it starts over beyond).
_REFIT_CACHE_BYTES = 256 << 20


class SequentialRefit:
    """Re-fits pruned layers in order to what the unpruned network computed there, given the
    inputs the already pruned layers upstream now give them: the kept weights w' of each
    output channel minimise ||P' w' - P w||^2 on the probes (P, P': the layer's input
    patches in the unpruned and in the pruned model, at the same positions; w: its unpruned
    weights), the bias absorbs the mean shift. The per-layer re-fit alone fits each layer to
    the unpruned inputs, so errors compound with depth; this undoes most of that (measured in
    benchmarks/results/codesign.md). Sparsity patterns are kept as they are."""

    def __init__(self, model, layers: list[PrunableLayer], probes: np.ndarray, seed: int = 0,
                 stepwise=None):
        """Takes the reference (unpruned) inputs and weights: call before pruning.
        `stepwise`: a statistics.Stepwise of these layers and probes to reuse."""
        self.model, self.layers, self.probes, self.seed = model, layers, probes, seed
        # One forward pass in steps where memory allows (statistics.Stepwise), else one tap
        # per layer, built once: a new Keras model would be traced again every call.
        self.stepwise = stepwise or statistics.Stepwise.within_budget(model, layers, probes)
        if self.stepwise:
            self.stepwise.restart()
        self.taps = None if self.stepwise else [statistics.tap_model(model, [pl])
                                                for pl in layers]
        self.reference = [self._inputs(k).rows for k in range(len(layers))]
        self.weights = [pl.folded_kernel.astype(np.float64).reshape(-1, pl.kernel.shape[-1])
                        for pl in layers]
        self.bias = [pl.folded_bias.astype(np.float64) for pl in layers]
        self._done: dict[tuple, tuple] = {}
        self._bytes = 0

    def apply(self, levels: Sequence[Hashable] | None = None) -> None:
        """Re-fits every layer that has zeros, first to last. `levels[k]`: what names layer
        k's kernel before the re-fit (the search's level); with it, a layer whose own and
        upstream levels were re-fitted before takes that result (its re-fit depends on
        nothing else), so a search step that changes one layer re-fits from there on."""
        if self.stepwise:
            self.stepwise.restart()
        for k, (pl, xo, wo, bo) in enumerate(zip(self.layers, self.reference, self.weights,
                                                 self.bias)):
            key = None if levels is None else tuple(levels[:k + 1])
            if key in self._done:
                pl.set_folded(*self._done[key])
                continue
            current = pl.folded_kernel.reshape(wo.shape)
            keep = current != 0
            if keep.all():
                continue
            xp = self._inputs(k).rows
            xp, xo64 = xp.astype(np.float64), xo.astype(np.float64)
            mp, mo = xp.mean(0), xo64.mean(0)
            centre = pl.can_shift_bias
            cross = (xp - mp if centre else xp).T @ ((xo64 - mo if centre else xo64) @ wo)
            new = refit(Moments.of(xp, centre), wo, keep, target=cross / len(xp))
            delta = (bo + mo @ wo - mp @ new - pl.folded_bias) if centre else None
            result = (new.reshape(pl.kernel.shape).astype(np.float32),
                      None if delta is None else delta.astype(np.float32))
            pl.set_folded(*result)
            if key is not None:
                if self._bytes > _REFIT_CACHE_BYTES:
                    self._done.clear()
                    self._bytes = 0
                self._done[key] = result
                self._bytes += result[0].nbytes

    def _inputs(self, k: int) -> statistics.LayerSample:
        """Layer k's input sample with the weights the layers before it have now."""
        if self.stepwise:
            return self.stepwise.sample(k, self.seed)
        return statistics.collect(self.model, [self.layers[k]], self.probes, self.seed,
                                  tap=self.taps[k])[0]


def prune_layer(layer: PrunableLayer, x, error_budget: float,
                max_sparsity: float = 0.99, block_size: int = 1, iterations: int = 10,
                reconstruct: bool = True, input_scaled: bool = True) -> WeightPruningResult:
    """The largest magnitude-percentile sparsity whose relative output error on the probe
    activations `x` stays within `error_budget` (binary search over the percentile)."""
    pruner = LayerPruner(layer, x, block_size, reconstruct, input_scaled)
    best, best_err = search.largest_within_budget(
        pruner.evaluate, lambda c: c[1], max_sparsity, error_budget, iterations)
    result = pruner.result(best, best_err)
    result.block_size = block_size
    return result


def prune_weights(layers: list[PrunableLayer], inputs: list, error_budget: float,
                  max_sparsity: float = 0.99, block_size: int = 1, reconstruct: bool = True,
                  progress=None, input_scaled: bool = True) -> list[WeightPruningResult]:
    """Prunes every layer in place (zeros in its kernel) and returns what was done."""
    results = []
    for layer, x in zip(layers, inputs):
        r = prune_layer(layer, x, error_budget, max_sparsity,
                        block_size if layer.kind == "conv2d" else 1, reconstruct=reconstruct,
                        input_scaled=input_scaled)
        layer.set_folded(r.kernel, r.bias_delta)
        results.append(r)
        if progress is not None:
            progress.update(1)
    return results
