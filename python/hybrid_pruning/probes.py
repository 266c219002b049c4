"""Data-free probe inputs: statistics come from the model, never from a dataset.

"bn": inputs optimised so that every BatchNormalization layer sees batch statistics equal to
its stored running mean and variance (the idea of ZeroQ, Cai et al., CVPR 2020); on big
images each probe's per-channel contrast and level are optimised beside its pixels.
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

from hybrid_pruning import graph, statistics
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


# Multiply-accumulates the BatchNorm matching may spend (probes x steps x passes): the demo
# models get every step, a 224x224 ImageNet model a third of them or fewer (_bn_steps).
_BN_MACS = 6e12
_BN_MIN_STEPS = 25
# Activations a step of it may hold at once, with what the gradient keeps: about twice a
# forward pass's (statistics.activation_bytes_per_probe).
BN_BATCH_BYTES = 2 << 30
_BN_BYTES_PER_ACTIVATION = 2


def bn_batch(model, count: int, batch_bytes: int = BN_BATCH_BYTES) -> int:
    """Probes per mini-batch of the BatchNorm matching."""
    per_probe = _BN_BYTES_PER_ACTIVATION * statistics.activation_bytes_per_probe(model)
    return int(max(1, min(count, batch_bytes // max(per_probe, 1))))


def bn_bytes(model, count: int) -> int:
    """What the BatchNorm matching holds beyond the model: one mini-batch's activations."""
    return bn_batch(model, count) * _BN_BYTES_PER_ACTIVATION * \
        statistics.activation_bytes_per_probe(model)


def _bn_steps(model, count: int, steps: int) -> int:
    """Steps of the BatchNorm matching within _BN_MACS: each costs up to four forward passes
    over every probe (the moments, then a forward and a backward pass)."""
    macs = sum(graph.layer_macs(layer) for layer in model.layers)
    affordable = int(_BN_MACS // max(4 * count * macs, 1))
    return int(min(steps, max(_BN_MIN_STEPS, affordable)))


# Adam moves every input value by about the learning rate a step: fine on the demos' 16x16 and
# 64x64 images, noise on a 224x224 one (docs/design_history.md, "Probes at 224"). So the rate
# falls with the pixel count above 64x64.
_BN_LEARNING_RATE, _BN_FULL_RATE_VALUES = 0.1, 64 * 64


def bn_learning_rate(model) -> float:
    pixels = int(np.prod(_input_shape(model)[:-1]))
    return _BN_LEARNING_RATE * min(1.0, _BN_FULL_RATE_VALUES / max(pixels, 1))


def bn_affine_rate(pixel_rate: float) -> float:
    """The Adam rate of each probe's per-channel contrast and level. The first BatchNorm
    records the inputs' level and contrast; per-pixel steps at the full rate shift them
    well enough, but at a 224x224 image's low rate they barely move them and the deeper
    layers' gradients drown them (docs/design_history.md, "Probes at 224"). So what the
    pixels give up of the full rate, these two numbers a channel take: nothing on the
    demos' images, nearly all of it at 224x224."""
    return max(_BN_LEARNING_RATE - pixel_rate, 0.0)


def bn_matched_probes(model, count: int, input_range: tuple[float, float], seed: int,
                      steps: int = 100, learning_rate: float | None = None,
                      batch_bytes: int = BN_BATCH_BYTES, progress: bool = False
                      ) -> np.ndarray:
    """Starts from random_probes and descends on the BatchNorm statistics mismatch of the
    whole probe set. Where the probes' activations and their gradients do not fit in
    `batch_bytes` at once (a 224x224 model: about 0.2 GB a probe), each step takes two
    passes over mini-batches: the moments of every probe first, then each batch's share of
    the gradient, which given those moments is exact (_StatisticsLoss.partial)."""
    import keras
    import tensorflow as tf
    from tqdm import tqdm

    bns = [l for l in model.layers if graph.class_name(l) == "BatchNormalization"]
    x0 = random_probes(model, count, input_range, seed)
    if not bns:
        logging.warning("model has no BatchNormalization: 'bn' probes fall back to 'random'")
        return x0
    tap = graph.keras_module(model).Model(model.inputs, [bn.input for bn in bns])
    loss = _StatisticsLoss(bns)
    batch = bn_batch(tap, count, batch_bytes)
    steps = _bn_steps(model, count, steps)
    # Each probe is a * z + b: pixels z, and per probe and channel a contrast a and a level b
    # (bn_affine_rate).
    z = tf.Variable(x0)
    shape = (count,) + (1,) * (x0.ndim - 2) + (x0.shape[-1],)
    contrast = tf.Variable(np.ones(shape, np.float32))
    level = tf.Variable(np.zeros(shape, np.float32))
    pixel_rate = learning_rate or bn_learning_rate(model)
    pixel_opt = keras.optimizers.Adam(pixel_rate)
    affine_opt = keras.optimizers.Adam(bn_affine_rate(pixel_rate))
    image_axes = list(range(1, x0.ndim - 1))

    def features(xb):
        feats = tap(xb, training=False)
        return list(feats) if isinstance(feats, (list, tuple)) else [feats]

    @tf.function
    def probes_now():
        return contrast * z + level

    @tf.function
    def whole_gradient(xs):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            value = loss.of([tf.nn.moments(f, loss.axes(f)) for f in features(xs)])
        return value, tape.gradient(value, xs)

    @tf.function
    def batch_moments(xb):
        return [tf.nn.moments(f, loss.axes(f)) for f in features(xb)]

    @tf.function
    def batch_gradient(xb, means, weights_m, weights_v):
        with tf.GradientTape() as tape:
            tape.watch(xb)
            value = loss.partial(features(xb), means, weights_m, weights_v)
        return tape.gradient(value, xb)

    @tf.function
    def apply(grad):
        pixel_opt.apply_gradients([(contrast * grad, z)])
        per_image = lambda g: tf.reduce_sum(g, image_axes, keepdims=True)  # noqa: E731
        affine_opt.apply_gradients([(per_image(grad * z), contrast), (per_image(grad), level)])

    starts = range(0, count, batch)
    values, best, best_value, best_step = [], x0, np.inf, 0
    for _ in tqdm(range(steps), desc="probes", unit="step", disable=not progress, leave=False):
        x = probes_now()
        if batch >= count:
            value, grad = whole_gradient(x)
            values.append(float(value))
        else:
            parts = [(len(x0[s:s + batch]), batch_moments(x[s:s + batch])) for s in starts]
            means, variances = _pooled(parts)
            values.append(loss.value(means, variances))
        if not np.isfinite(values[-1]):
            # Some models' activations overflow as the probes move (a near-dead channel,
            # its stored variance ~0, amplified layer after layer): keep the best probes.
            logging.warning("bn probes: the statistics loss became %s after %d steps; "
                            "keeping the probes of step %d (loss %.4g)", values[-1],
                            len(values) - 1, best_step, best_value)
            return best
        if values[-1] < best_value:
            best, best_value, best_step = x.numpy(), values[-1], len(values) - 1
        if batch < count:
            weights_m, weights_v = loss.weights(means, variances, count)
            means = [tf.constant(m, tf.float32) for m in means]
            grad = tf.concat([batch_gradient(x[s:s + batch], means, weights_m, weights_v)
                              for s in starts], 0)
        apply(grad)
    logging.info("bn probes: statistics loss %.4f -> %.4f over %d steps, batches of %d",
                 values[0], values[-1], len(values), batch)
    return probes_now().numpy().astype(np.float32)


def _pooled(parts: list) -> tuple[list, list]:
    """Each BatchNorm input's mean and variance over all probes, from its batches' (count,
    [(mean, variance) per BatchNorm]): combined in float64 around the pooled mean, so
    channels whose mean dwarfs their spread keep their variance."""
    n = np.array([c for c, _ in parts], np.float64)[:, None]
    means, variances = [], []
    for k in range(len(parts[0][1])):
        m = np.stack([np.asarray(p[k][0], np.float64) for _, p in parts])
        v = np.stack([np.asarray(p[k][1], np.float64) for _, p in parts])
        mean = np.sum(n * m, 0) / n.sum()
        means.append(mean)
        variances.append(np.sum(n * (v + (m - mean) ** 2), 0) / n.sum())
    return means, variances


class _StatisticsLoss:
    """Mismatch of BatchNorm inputs' moments with the stored ones: per channel, the squared
    mean and standard-deviation differences in units of the stored deviation, averaged."""

    def __init__(self, bns):
        import tensorflow as tf

        self._tf = []
        for bn in bns:
            w = {graph.variable_name(v): tf.constant(np.asarray(v.numpy(), np.float32))
                 for v in bn.weights}
            self._tf.append((w["moving_mean"], tf.sqrt(w["moving_variance"] + bn.epsilon)))
        self.targets = [(m.numpy().astype(np.float64), s.numpy().astype(np.float64))
                        for m, s in self._tf]

    @staticmethod
    def axes(f) -> list[int]:
        return list(range(len(f.shape) - 1))

    def of(self, moments: list):
        """The loss in TensorFlow, from every BatchNorm input's (mean, variance)."""
        import tensorflow as tf

        total = 0.0
        for (m, v), (mean, std) in zip(moments, self._tf):
            total += tf.reduce_mean(tf.square(m - mean) / tf.square(std)) + tf.reduce_mean(
                tf.square(tf.sqrt(v + 1e-8) - std) / tf.square(std))
        return total

    def value(self, means: list, variances: list) -> float:
        return float(sum(np.mean((m - mean) ** 2 / std ** 2)
                         + np.mean((np.sqrt(v + 1e-8) - std) ** 2 / std ** 2)
                         for m, v, (mean, std) in zip(means, variances, self.targets)))

    def weights(self, means: list, variances: list, count: int) -> tuple[list, list]:
        """dL/dm and dL/dv per channel, over the elements each moment averages (probes x
        positions; positions are known only in the graph, so divided there)."""
        import tensorflow as tf

        wm, wv = [], []
        for m, v, (mean, std) in zip(means, variances, self.targets):
            c = len(mean)
            root = np.sqrt(v + 1e-8)
            wm.append(tf.constant(2 * (m - mean) / (std ** 2 * c) / count, tf.float32))
            wv.append(tf.constant((root - std) / (std ** 2 * c * root) / count, tf.float32))
        return wm, wv

    def partial(self, feats: list, means: list, weights_m: list, weights_v: list):
        """A batch's share of the loss, linearised at the pooled moments: its gradient with
        respect to the batch's probes is the whole loss's (dm/df = 1/N, dv/df = 2 (f - m)/N,
        N = probes x positions)."""
        import tensorflow as tf

        total = 0.0
        for f, m, wm, wv in zip(feats, means, weights_m, weights_v):
            axes = self.axes(f)
            positions = float(np.prod([int(d) for d in f.shape[1:-1]] or [1]))
            total += (tf.reduce_sum(wm * tf.reduce_sum(f, axes))
                      + tf.reduce_sum(wv * tf.reduce_sum(tf.square(f - m), axes))) / positions
        return total


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


def make_probes(model, kind: str, count: int, input_range: tuple[float, float], seed: int,
                progress: bool = False) -> np.ndarray:
    """`progress`: a progress bar while BatchNorm-matched probes are optimised (minutes on a
    224x224 model)."""
    if kind not in KINDS:
        raise UserError(f"--probe={kind}: expected one of {', '.join(KINDS)}")
    if count < 1:
        raise UserError(f"--probe_count={count}: must be positive")
    kind = resolve(model, kind)
    if kind == "random":
        return random_probes(model, count, input_range, seed)
    if kind == "image":
        return image_probes(model, count, input_range, seed)
    return bn_matched_probes(model, count, input_range, seed, progress=progress)
