"""Near-constant channels: a channel whose value (after its nonlinearity, as the next layer
sees it) barely varies is replaced by its mean, folded into the next layer's bias, and
removed from both layers.

Where plain standard deviation misleads, and what we do instead:
- Zero padding: a channel that is constant inside the image is not constant at the borders
  of a SAME-padded next conv, where it reads zeros while the folded bias keeps adding the
  mean. A channel with a small std but a large mean is therefore not free to remove. The
  ranking and the budget both use the exact error of the fold on the next layer's output,
  computed from its zero-padded input patches, which counts the border effect.
- Weights: a tiny std multiplied by large next-layer weights still matters; the error is
  measured at the next layer's output, so channels are ranked by what their removal costs
  there, not by std alone.
- Pooling and other channel-wise layers between the two layers need no special case: the
  statistics are taken at the next layer's input, after them.
"""

from __future__ import annotations

import numpy as np

from hybrid_pruning.techniques import channel_reduction


def _propose(x: np.ndarray, channels: int) -> list[channel_reduction.Candidate]:
    mean, _ = channel_reduction.channel_moments(x, channels)
    return [channel_reduction.Candidate(c, None, 0.0, float(mean[c]), 0.0)
            for c in range(channels)]


def fold_constant_channels(model, probes: np.ndarray, error_budget: float):
    """Returns (new model, plans, refused chains) with near-constant channels removed."""
    return channel_reduction.reduce_channels(model, probes, error_budget, _propose)
