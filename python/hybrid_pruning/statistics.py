"""Probe statistics of each prunable layer's input, streamed: one batch of probes at a time.

Every technique needs the same thing of a layer: rows of its input patches (one row per
output position, in the kernel's flattened (h, w, in) order), from which it forms moments,
re-fits weights and measures errors. Holding every layer's activations for every probe at
once does not fit for big models (a VGG-16 at 224x224 has ~36 MB of activations per probe),
and neither does extracting every patch (x9 for 3x3 kernels). So the probes go through the
model in batches sized to a memory budget, and each batch leaves only a random sample of
patch rows per layer (positions drawn before extraction, so no full patch tensor is made).
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from hybrid_pruning import graph

MAX_ROWS = 32768  # patch rows sampled per layer
MAX_VALUES = 1 << 25  # and at most this many values per layer (128 MiB in float32)
MIN_ROWS = 1024
BATCH_BYTES = 256 << 20  # activations of one batch of probes, all tapped layers together


@dataclasses.dataclass
class LayerSample:
    """A sample of one layer's input patches on the probes."""

    rows: np.ndarray  # [R, K] float32
    natural_sparsity: float  # share of the layer's input that is exactly zero

    @property
    def width(self) -> int:
        return int(self.rows.shape[1])

    def channel_values(self, channels: int, spatial: bool) -> np.ndarray:
        """[M, channels] values of each input channel: from the centre tap of a conv's
        patches (never padding for odd kernels), or every position of a flattened input."""
        taps = self.width // channels
        if not spatial or taps == 1:
            return self.rows.reshape(-1, channels)
        centre = taps // 2
        return self.rows[:, centre * channels:(centre + 1) * channels]


def row_limit(width: int) -> int:
    return max(MIN_ROWS, min(MAX_ROWS, MAX_VALUES // max(width, 1)))


def _out_size(size: int, k: int, stride: int, dilation: int, padding: str) -> tuple[int, int]:
    """(output size, padding before) of one spatial axis, as TensorFlow pads."""
    span = (k - 1) * dilation + 1
    if padding == "SAME":
        out = -(-size // stride)
        total = max((out - 1) * stride + span - size, 0)
        return out, total // 2
    return (size - span) // stride + 1, 0


def patch_rows(layer: graph.PrunableLayer, x: np.ndarray, limit: int | None = None,
               rng: np.random.Generator | None = None) -> np.ndarray:
    """Rows of input patches of `layer` on its input `x` [N, H, W, C] (zero padding
    included): all of them, or `limit` positions drawn at random."""
    rng = rng or np.random.default_rng(0)
    if layer.kind == "dense":
        rows = x.reshape(x.shape[0], -1)
        if limit is not None and len(rows) > limit:
            rows = rows[np.sort(rng.choice(len(rows), limit, replace=False))]
        return np.asarray(rows, np.float32)
    kh, kw = layer.kernel.shape[:2]
    (sh, sw), (dh, dw) = layer.strides, layer.dilations
    n, h, w, c = x.shape
    oh, top = _out_size(h, kh, sh, dh, layer.padding)
    ow, left = _out_size(w, kw, sw, dw, layer.padding)
    total = n * oh * ow
    if limit is not None and total > limit:
        index = np.sort(rng.choice(total, limit, replace=False))
    else:
        index = np.arange(total)
    ni, rest = np.divmod(index, oh * ow)
    oy, ox = np.divmod(rest, ow)
    bottom = max((oh - 1) * sh + (kh - 1) * dh + 1 - h - top, 0)
    right = max((ow - 1) * sw + (kw - 1) * dw + 1 - w - left, 0)
    xp = np.pad(np.asarray(x, np.float32), ((0, 0), (top, bottom), (left, right), (0, 0)))
    rows = np.empty((len(index), kh, kw, c), np.float32)
    for i in range(kh):
        for j in range(kw):
            rows[:, i, j] = xp[ni, oy * sh + i * dh, ox * sw + j * dw]
    return rows.reshape(len(index), -1)


def sample_of(layer: graph.PrunableLayer, x: np.ndarray, seed: int = 0) -> LayerSample:
    """The sample of a layer's input held in memory as a whole (small models, tests)."""
    width = int(np.prod(layer.kernel.shape[:-1]))
    rows = patch_rows(layer, x, row_limit(width), np.random.default_rng(seed))
    return LayerSample(rows, float(np.mean(x == 0)))


def as_sample(layer: graph.PrunableLayer, x) -> LayerSample:
    return x if isinstance(x, LayerSample) else sample_of(layer, np.asarray(x, np.float32))


def activation_bytes_per_probe(model) -> int:
    """float32 bytes of every layer output of one probe: what a forward pass touches."""
    total = 0
    for layer in model.layers:
        for t in graph.flatten(layer.output):
            total += _tensor_bytes(t)
    return total


def tap_model(model, layers: list[graph.PrunableLayer]):
    """The model from the input to the layers' inputs (for collect; build once, reuse)."""
    return graph.keras_module(model).Model(model.inputs, [pl.layer.input for pl in layers])


def collect(model, layers: list[graph.PrunableLayer], probes: np.ndarray, seed: int = 0,
            batch_bytes: int = BATCH_BYTES, tap=None,
            values: list[np.ndarray] | None = None) -> list[LayerSample]:
    """A sample of every layer's input patches on the probes, one batch at a time. The same
    seed and layer shapes draw the same positions, whatever the weights. `values`: the
    layers' inputs on every probe, computed already (Stepwise), instead of a forward pass."""
    if values is None:
        tap = tap if tap is not None else tap_model(model, layers)
    per_probe = sum(int(np.prod(pl.layer.input.shape[1:])) * 4 for pl in layers)
    batch = int(max(1, min(len(probes), batch_bytes // max(per_probe, 1))))
    rng = np.random.default_rng(seed)
    widths = [int(np.prod(pl.kernel.shape[:-1])) for pl in layers]
    limits = [row_limit(w) for w in widths]
    parts: list[list[np.ndarray]] = [[] for _ in layers]
    zeros = np.zeros(len(layers))
    sizes = np.zeros(len(layers))
    for start in range(0, len(probes), batch):
        chunk = probes[start:start + batch]
        if values is None:
            outs = tap.predict_on_batch(chunk)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
        else:
            outs = [v[start:start + batch] for v in values]
        for k, (pl, out) in enumerate(zip(layers, outs)):
            x = np.asarray(out, np.float32)
            if pl.separable:
                x = graph.depthwise_half(pl.layer, x)
            zeros[k] += np.count_nonzero(x == 0)
            sizes[k] += x.size
            # This batch's share of the layer's rows (at least one row per probe).
            quota = max(len(chunk), -(-limits[k] * len(chunk) // len(probes)))
            parts[k].append(patch_rows(pl, x, quota, rng))
    return [LayerSample(np.concatenate(p), float(z / max(s, 1)))
            for p, z, s in zip(parts, zeros, sizes)]


# The most Stepwise may hold (every probe's live tensors); beyond it SequentialRefit and the
# damage calibration run from the input for each layer instead. The memory plan counts it.
STEPWISE_BYTES = 4 << 30


class Stepwise:
    """The probes' forward pass advanced one prunable layer at a time, for SequentialRefit
    (which changes each layer before it reads the next one's input): a tap model costs every
    node from the input per layer, quadratic in depth. Segment j runs the nodes layer j's
    input needs that no earlier layer's input needed, as one traced function on batches of
    probes; only tensors that later segments read or layers ask for are held, for every
    probe. outputs() runs the rest to the model's outputs without moving the pass: the
    damage of a change to the layer it stands at costs the nodes from there on."""

    def __init__(self, model, plan: "_Plan", layers: list[graph.PrunableLayer],
                 probes: np.ndarray):
        """Use within_budget()."""
        self.layers, self.probes, self.plan = layers, probes, plan
        self.input = graph.flatten(model.inputs)[0]
        self.functions = [_segment_function(plan.nodes, seg) for seg in plan.segments]
        self.restart()

    @classmethod
    def within_budget(cls, model, layers: list[graph.PrunableLayer], probes: np.ndarray
                      ) -> "Stepwise | None":
        """A Stepwise of these probes, or None where planned_bytes() is 0."""
        plan = _stepwise_plan(model, layers)
        return cls(model, plan, layers, probes) if _planned(plan, len(probes)) else None

    @staticmethod
    def planned_bytes(model, layers: list[graph.PrunableLayer], probe_count: int) -> int:
        """What a Stepwise of these probes holds at most; 0 where it cannot run (nested
        models, shared layers, layers not in a graph order) or would exceed STEPWISE_BYTES."""
        return _planned(_stepwise_plan(model, layers), probe_count)

    def restart(self) -> None:
        """Back to the probes (weights changed upstream)."""
        self.values = {id(self.input): self.probes}
        self.done = -1  # segments run
        self.last = -1  # the last layer whose input was given

    def inputs(self, k: int) -> np.ndarray:
        """Layer k's input on every probe, with the weights every layer has now. Layers
        before k must not change until the next restart(); layer k may."""
        if k <= self.last:
            raise ValueError(f"layer {self.layers[k].name}: its input was passed; restart()")
        self._advance(self.values, range(self.done + 1, k + 1))
        self.done = max(self.done, k)
        self.last = k
        return self.values[id(self.layers[k].layer.input)]

    def outputs(self) -> list[np.ndarray]:
        """The model's outputs on every probe, from where the pass stands: the nodes not run
        yet, with the weights their layers have now. The pass stays where it is (after
        inputs(k), layer k may be changed and outputs() asked again)."""
        values = dict(self.values)
        self._advance(values, range(self.done + 1, len(self.plan.segments)))
        return [values[id(t)] for t in self.plan.segments[-1].targets]

    def _advance(self, values: dict, segments) -> None:
        n = len(self.probes)
        for j in segments:
            seg = self.plan.segments[j]
            for key in [key for key in values if self.plan.until.get(key, -1) < j]:
                del values[key]
            if not seg.nodes:
                continue
            parts = [self.functions[j](*(values[id(t)][s:s + seg.batch] for t in seg.reads))
                     for s in range(0, n, seg.batch)]
            for m, t in enumerate(seg.writes):
                values[id(t)] = np.concatenate([np.asarray(p[m]) for p in parts])

    def sample(self, k: int, seed: int = 0) -> LayerSample:
        """collect() of layer k alone, from inputs(k): the same rows for the same inputs."""
        return collect(None, [self.layers[k]], self.probes, seed, values=[self.inputs(k)])[0]


@dataclasses.dataclass
class _Segment:
    nodes: list[int]  # in graph order
    reads: list  # tensors made before it
    writes: list  # tensors it makes that later segments read or a layer asks for
    batch: int  # probes per call
    targets: list  # what it is for: a layer's input, or the model's outputs


@dataclasses.dataclass
class _Plan:
    nodes: list
    segments: list[_Segment]
    until: dict[int, int]  # tensor id -> the last segment that reads it (or layer asking)
    peak: int  # bytes per probe held at most by inputs(); outputs() may hold as much again


def _planned(plan: _Plan | None, probe_count: int) -> int:
    need = 0 if plan is None else 2 * plan.peak * probe_count
    return need if need <= STEPWISE_BYTES else 0


def _tensors(structure) -> list:
    return [x for x in graph.flatten(structure) if graph._is_keras_tensor(x)]


def _tensor_bytes(t) -> int:
    """float32 bytes of one probe's share of a Keras tensor."""
    return int(np.prod([int(d) for d in t.shape[1:] if d is not None])) * 4


def _stepwise_plan(model, layers: list[graph.PrunableLayer]) -> _Plan | None:
    """Stepwise's segments, or None where it cannot run: nested models, shared layers, or a
    layer whose input needs a later one of `layers` (they are not in a graph order)."""
    nodes = graph.model_nodes(model)
    if len(graph.flatten(model.inputs)) != 1 or any(
            graph._is_model(graph._node_layer(n)) for n in nodes) or any(
            len(pl.layer._inbound_nodes) != 1 for pl in layers):
        return None
    index = {id(n): i for i, n in enumerate(nodes)}
    owner = {id(graph._node_layer(n)): i for i, n in enumerate(nodes)}
    later = {owner.get(id(pl.layer)): k for k, pl in enumerate(layers)}
    segment_of: dict[int, int] = {}
    groups: list[list[int]] = []
    # One group per layer's input, and a last one for what the model's outputs need.
    wanted = [[pl.layer.input] for pl in layers] + [graph.flatten(model.outputs)]
    for k, targets in enumerate(wanted):
        group, stack = [], list(targets)
        while stack:
            history = getattr(stack.pop(), "_keras_history", None)
            if history is None or history[0] is None:
                continue
            i = index.get(id(history[0]._inbound_nodes[history[1]]))
            if i is None or i in segment_of:
                continue
            if later.get(i, -1) >= k:
                return None
            segment_of[i] = k
            args, kwargs = graph._node_call(nodes[i])
            if args or kwargs:  # not an InputLayer: its output is the probes
                group.append(i)
            stack.extend(_tensors((args, kwargs)))
        groups.append(sorted(group))
    made = {id(t): k for k, group in enumerate(groups) for i in group
            for t in graph.flatten(nodes[i].outputs)}
    until: dict[int, int] = {}
    for k, group in enumerate(groups):
        for i in group:
            for x in _tensors(graph._node_call(nodes[i])):
                if made.get(id(x), -1) < k:  # read across segments
                    until[id(x)] = max(until.get(id(x), -1), k)
        for x in wanted[k]:
            until[id(x)] = max(until.get(id(x), -1), k)
    segments, live, peak = [], {}, 0
    for k, group in enumerate(groups):
        reads = {id(x): x for i in group for x in _tensors(graph._node_call(nodes[i]))
                 if made.get(id(x), -1) < k}
        writes = [t for i in group for t in graph.flatten(nodes[i].outputs) if id(t) in until]
        inner = sum(_tensor_bytes(t) for i in group for t in graph.flatten(nodes[i].outputs))
        inner += sum(_tensor_bytes(x) for x in reads.values())
        batch = int(max(1, min(32, BATCH_BYTES // max(3 * inner, 1))))
        segments.append(_Segment(group, list(reads.values()), writes, batch, wanted[k]))
        live = {key: b for key, b in live.items() if until[key] >= k}
        live.update({id(t): _tensor_bytes(t) for t in writes})
        peak = max(peak, sum(live.values()))
    return _Plan(nodes, segments, until, peak)


def _segment_function(nodes: list, segment: _Segment):
    """One traced function for a segment's nodes (graph mode: fused as predict() is)."""
    import tensorflow as tf

    if not segment.nodes:
        return None
    specs = [tf.TensorSpec((None, *x.shape[1:]), x.dtype) for x in segment.reads]

    @tf.function(input_signature=specs)
    def run(*xs):
        env = {id(t): x for t, x in zip(segment.reads, xs)}
        for i in segment.nodes:
            args, kwargs = graph._node_call(nodes[i])
            mapped = tf.nest.map_structure(
                lambda x: env[id(x)] if graph._is_keras_tensor(x) else x, (args, kwargs))
            outputs = graph.flatten(graph._node_layer(nodes[i])(*mapped[0], **mapped[1]))
            for t, o in zip(graph.flatten(nodes[i].outputs), outputs):
                env[id(t)] = o
        return [env[id(t)] for t in segment.writes]

    return run


def predict_batch(model) -> int:
    """A batch size for whole-model forward passes that keeps their activations within
    BATCH_BYTES."""
    return int(max(1, min(32, BATCH_BYTES // max(activation_bytes_per_probe(model), 1))))


_RUNTIME_BYTES = 2 << 30  # TensorFlow, Keras and the interpreter themselves


def planned_bytes(model, layers: list[graph.PrunableLayer], probe_count: int,
                  stepwise: bool = False) -> int:
    """What compressing `model` will hold at its peak: the model several times over
    (original, working copy, converted), probes with the outputs of the original, the
    Keras model and the .tflite, every layer's patch sample, one forward batch, the
    largest layer's moment matrices and, with `stepwise` (a SequentialRefit), its pass."""
    params = sum(int(np.prod(w.shape)) for w in model.weights) * 4
    inputs = int(np.prod(model.inputs[0].shape[1:])) * 4
    outputs = sum(int(np.prod(t.shape[1:])) for t in graph.flatten(model.outputs)) * 4
    samples, widest = 0, 1
    for pl in layers:
        width = int(np.prod(pl.kernel.shape[:-1]))
        positions = 1 if pl.kind == "dense" else int(np.prod(pl.layer.output.shape[1:3]))
        samples += min(row_limit(width), positions * probe_count) * width * 4
        widest = max(widest, width)
    moments = 3 * widest * min(widest, row_limit(widest)) * 8 + row_limit(widest) * widest * 8
    batch = predict_batch(model) * activation_bytes_per_probe(model) * 3
    return int(_RUNTIME_BYTES + 5 * params + probe_count * (2 * inputs + 4 * outputs)
               + samples + moments + batch
               + (Stepwise.planned_bytes(model, layers, probe_count) if stepwise else 0))


def available_bytes() -> int:
    """Memory this process may still use: the cgroup's limit or the system's available
    memory, whichever is smaller."""
    limits = []
    try:
        text = pathlib.Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if text != "max":
            used = int(pathlib.Path("/sys/fs/cgroup/memory.current").read_text())
            limits.append(int(text) - used)
    except (OSError, ValueError):
        pass
    try:
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    return min(limits) if limits else 1 << 62
