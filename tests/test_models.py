"""Helpers shared by the tests that build small models by hand."""

from __future__ import annotations

import numpy as np


def randomize_batch_norm(model, seed: int) -> None:
    """Gives every BatchNormalization non-trivial statistics, as training would (Keras 3 or
    tf_keras)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            n = layer.get_weights()[0].size
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.3, n),
                               rng.normal(0, 0.3, n), rng.uniform(0.5, 2.0, n)])
