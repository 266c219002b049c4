"""Near-identical channels: a channel j that is nearly an affine copy a*x_i + b of a kept
channel i is removed; the next layer's weights for j are added to those of i (times a) and
b times them to the bias.

All pairs come from one covariance (Gram) matrix of the channels over the probe activations:
O(C^2 N) numpy work, no loop over pairs. The best partner of j is the channel with the
highest |correlation|; the final choice uses the exact error at the next layer's output.
"""

from __future__ import annotations

import numpy as np

from hybrid_pruning.techniques import channel_reduction


def _propose(x: np.ndarray, channels: int) -> list[channel_reduction.Candidate]:
    mean, cov = channel_reduction.channel_moments(x, channels)
    var = np.maximum(np.diag(cov), 1e-12)
    corr = cov / np.sqrt(np.outer(var, var))
    np.fill_diagonal(corr, 0.0)
    partner = np.argmax(np.abs(corr), axis=0)  # best source i for each channel j
    cols = np.arange(channels)
    scale = cov[partner, cols] / var[partner]
    offset = mean - scale * mean[partner]
    return [channel_reduction.Candidate(int(j), int(partner[j]), float(scale[j]),
                                        float(offset[j]), 0.0) for j in range(channels)]


def merge_channels(model, probes: np.ndarray, error_budget: float):
    """Returns (new model, plans, refused chains) with near-identical channels merged."""
    return channel_reduction.reduce_channels(model, probes, error_budget, _propose)
