"""Data-free probe inputs: statistics come from the model, never from a dataset.

"bn": inputs optimised so that every BatchNormalization layer sees batch statistics equal to
its stored running mean and variance (the idea of ZeroQ, Cai et al., CVPR 2020).
"random": uniform noise over the input range the user gives.
"""

from __future__ import annotations

import numpy as np
from absl import logging

from hybrid_pruning import graph
from hybrid_pruning.io import UserError

KINDS = ("bn", "random")


def _input_shape(model) -> tuple[int, ...]:
    if len(model.inputs) != 1:
        raise UserError(f"model '{model.name}' has {len(model.inputs)} inputs; only one is supported")
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise UserError(f"model '{model.name}' input shape {shape} must be fully defined "
                        "(except the batch dimension)")
    return tuple(int(d) for d in shape)


def random_probes(model, count: int, input_range: tuple[float, float], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lo, hi = input_range
    return rng.uniform(lo, hi, (count, *_input_shape(model))).astype(np.float32)


def bn_matched_probes(model, count: int, input_range: tuple[float, float], seed: int,
                      steps: int = 100, learning_rate: float = 0.1) -> np.ndarray:
    """Starts from random_probes and descends on the BatchNorm statistics mismatch."""
    import keras
    import tensorflow as tf

    bns = [l for l in model.layers if graph.class_name(l) == "BatchNormalization"]
    x0 = random_probes(model, count, input_range, seed)
    if not bns:
        logging.warning("model has no BatchNormalization: 'bn' probes fall back to 'random'")
        return x0
    tap = graph.keras_module(model).Model(model.inputs, [bn.input for bn in bns])
    targets = []
    for bn in bns:
        w = {graph.variable_name(v): tf.constant(np.asarray(v.numpy(), np.float32))
             for v in bn.weights}
        targets.append((w["moving_mean"], tf.sqrt(w["moving_variance"] + bn.epsilon)))
    x = tf.Variable(x0)
    opt = keras.optimizers.Adam(learning_rate)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            feats = tap(x, training=False)
            if not isinstance(feats, (list, tuple)):
                feats = [feats]
            loss = 0.0
            for f, (mean, std) in zip(feats, targets):
                axes = list(range(len(f.shape) - 1))
                m, v = tf.nn.moments(f, axes)
                loss += tf.reduce_mean(tf.square(m - mean) / tf.square(std)) + tf.reduce_mean(
                    tf.square(tf.sqrt(v + 1e-8) - std) / tf.square(std))
        grads = tape.gradient(loss, [x])
        opt.apply_gradients(zip(grads, [x]))
        return loss

    first = last = None
    for i in range(steps):
        last = float(step())
        first = last if i == 0 else first
    logging.info("bn probes: statistics loss %.4f -> %.4f over %d steps", first, last, steps)
    return x.numpy().astype(np.float32)


def make_probes(model, kind: str, count: int, input_range: tuple[float, float], seed: int
                ) -> np.ndarray:
    if kind not in KINDS:
        raise UserError(f"--probe={kind}: expected one of {', '.join(KINDS)}")
    if count < 1:
        raise UserError(f"--probe_count={count}: must be positive")
    if kind == "random":
        return random_probes(model, count, input_range, seed)
    return bn_matched_probes(model, count, input_range, seed)
