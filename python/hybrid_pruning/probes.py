"""Data-free probe inputs: statistics come from the model, never from a dataset.

"bn": inputs optimised so that every BatchNormalization layer sees batch statistics equal to
its stored running mean and variance (the idea of ZeroQ, Cai et al., CVPR 2020).
"image": synthetic images with natural-image statistics, for models without BatchNorm:
half 1/f-spectrum noise (natural images have an amplitude spectrum close to 1/f), half
dead-leaves images (occluding disks with power-law sizes, whose statistics match natural
images' edges and flat regions; used data-free by Lazarevich et al., ICCV Workshops 2021).
Colour channels are strongly correlated, as in photographs.
"random": uniform noise over the input range the user gives.
"auto" (the default): "bn" where the model has BatchNormalization, else "image".
"""

from __future__ import annotations

import numpy as np
from absl import logging

from hybrid_pruning import graph
from hybrid_pruning.io import UserError

KINDS = ("auto", "bn", "image", "random")


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


def _pink_noise(rng: np.random.Generator, n: int, h: int, w: int, c: int) -> np.ndarray:
    """Images with amplitude spectrum 1/f^alpha (alpha around 1), zero mean, unit std."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.maximum(np.sqrt(fy * fy + fx * fx), 1.0 / max(h, w))
    alpha = rng.uniform(0.8, 1.5, (n, 1, 1, 1))
    amplitude = f[None, :, :, None] ** -alpha
    spectrum = amplitude * (rng.normal(size=(n, *f.shape, c + 1))
                            + 1j * rng.normal(size=(n, *f.shape, c + 1)))
    fields = np.fft.irfft2(spectrum, s=(h, w), axes=(1, 2))
    # One field shared by every channel plus a weaker one of each: correlated colours.
    img = 0.9 * fields[..., :1] + 0.25 * fields[..., 1:]
    img -= img.mean(axis=(1, 2, 3), keepdims=True)
    return img / np.maximum(img.std(axis=(1, 2, 3), keepdims=True), 1e-12)


def _dead_leaves(rng: np.random.Generator, n: int, h: int, w: int, c: int) -> np.ndarray:
    """Occluding disks with radii of density ~ r^-3 and correlated colours, in [-1, 1]."""
    out = np.empty((n, h, w, c))
    yy, xx = np.mgrid[0:h, 0:w]
    r_min, r_max = max(1.0, max(h, w) / 40), max(h, w) / 2
    for i in range(n):
        img = np.empty((h, w, c))
        img[:] = rng.uniform(-1, 1) + 0.2 * rng.uniform(-1, 1, c)
        # Enough leaves that later ones cover most of the canvas.
        for _ in range(int(min(2000, 150 + h * w / 64))):
            u = rng.uniform()
            r = (r_min ** -2 - u * (r_min ** -2 - r_max ** -2)) ** -0.5
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 1, h)
            x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 1, w)
            if y0 >= y1 or x0 >= x1:
                continue
            mask = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 <= r * r
            colour = rng.uniform(-1, 1) + 0.2 * rng.uniform(-1, 1, c)
            img[y0:y1, x0:x1][mask] = colour
        out[i] = img
    return out


def image_probes(model, count: int, input_range: tuple[float, float], seed: int) -> np.ndarray:
    """Half 1/f noise, half dead leaves, each image with its own brightness and contrast,
    inside the input range. Inputs that are not images (rank != 3) get uniform noise."""
    shape = _input_shape(model)
    if len(shape) != 3:
        return random_probes(model, count, input_range, seed)
    rng = np.random.default_rng(seed)
    h, w, c = shape
    pink = count // 2
    raw = np.concatenate([0.35 * _pink_noise(rng, pink, h, w, c),
                          0.5 * _dead_leaves(rng, count - pink, h, w, c)])
    raw = raw[rng.permutation(count)]
    lo, hi = input_range
    brightness = rng.uniform(0.3, 0.7, (count, 1, 1, 1))
    contrast = rng.uniform(0.5, 1.0, (count, 1, 1, 1))
    unit = np.clip(brightness + contrast * raw, 0.0, 1.0)
    return (lo + (hi - lo) * unit).astype(np.float32)


def has_batch_norm(model) -> bool:
    return any(graph.class_name(l) == "BatchNormalization" for l in model.layers)


def resolve(model, kind: str) -> str:
    """The probe kind "auto" stands for on this model."""
    if kind != "auto":
        return kind
    return "bn" if has_batch_norm(model) else "image"


def make_probes(model, kind: str, count: int, input_range: tuple[float, float], seed: int
                ) -> np.ndarray:
    if kind not in KINDS:
        raise UserError(f"--probe={kind}: expected one of {', '.join(KINDS)}")
    if count < 1:
        raise UserError(f"--probe_count={count}: must be positive")
    kind = resolve(model, kind)
    if kind == "random":
        return random_probes(model, count, input_range, seed)
    if kind == "image":
        return image_probes(model, count, input_range, seed)
    return bn_matched_probes(model, count, input_range, seed)
