"""The one place that knows Keras: which layers can be pruned, and their BatchNorm folding.

Everything after this module works on numpy arrays in TFLite's layouts.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hybrid_pruning.io import UserError


@dataclasses.dataclass
class PrunableLayer:
    """A Conv2D or Dense layer, or the pointwise half of a SeparableConv2D (a 1x1 conv on
    its depthwise half's output), with the BatchNormalization that directly follows it (if
    any) folded into an effective kernel and bias: what the TFLite converter will emit."""

    name: str
    kind: str  # "conv2d" | "dense"
    layer: object
    batch_norm: object | None
    scale: np.ndarray  # per output channel, from the folded BatchNorm (1 without one)
    shift: np.ndarray  # per output channel: folded bias = bias * scale + shift
    strides: tuple[int, int] = (1, 1)
    dilations: tuple[int, int] = (1, 1)
    padding: str = "VALID"

    @property
    def kernel_index(self) -> int:
        return kernel_index(self.layer)

    @property
    def separable(self) -> bool:
        return class_name(self.layer) == "SeparableConv2D"

    @property
    def kernel(self) -> np.ndarray:
        """The layer's own kernel (HWIO for conv, IO for dense)."""
        return np.asarray(self.layer.get_weights()[self.kernel_index], np.float32)

    @property
    def macs(self) -> int:
        """Dense multiply-adds of one inference (batch 1)."""
        k = self.kernel
        if self.kind == "dense":
            return int(k.size)
        out_h, out_w = (int(d) for d in self.layer.output.shape[1:3])
        return int(out_h * out_w * k.size)

    @property
    def folded_kernel(self) -> np.ndarray:
        return self.kernel * self.scale

    @property
    def folded_bias(self) -> np.ndarray:
        weights = self.layer.get_weights()
        bias = (weights[self.kernel_index + 1] if len(weights) > self.kernel_index + 1
                else np.zeros(self.scale.shape, np.float32))
        return (bias * self.scale + self.shift).astype(np.float32)

    @property
    def can_shift_bias(self) -> bool:
        """Whether the folded bias can be changed: the layer has a bias or a folded BatchNorm."""
        if self.batch_norm is not None:
            return any(variable_name(v) == "beta" for v in self.batch_norm.weights)
        return len(self.layer.get_weights()) > self.kernel_index + 1

    def set_kernel(self, kernel: np.ndarray) -> None:
        weights = self.layer.get_weights()
        weights[self.kernel_index] = kernel.astype(weights[self.kernel_index].dtype)
        self.layer.set_weights(weights)

    def set_folded(self, folded_kernel: np.ndarray, bias_delta: np.ndarray | None = None) -> None:
        """Writes a folded kernel back through the BatchNorm scale, and adds `bias_delta` to the
        folded bias (through the BatchNorm's beta, or the layer's own bias)."""
        safe = np.where(np.abs(self.scale) > 1e-12, self.scale, 1.0)
        kernel = np.where(np.abs(self.scale) > 1e-12, folded_kernel / safe, 0.0)
        weights = self.layer.get_weights()
        k = self.kernel_index
        weights[k] = kernel.astype(weights[k].dtype)
        if bias_delta is not None and self.batch_norm is None:
            weights[k + 1] = (weights[k + 1] + bias_delta).astype(weights[k + 1].dtype)
        self.layer.set_weights(weights)
        if bias_delta is not None and self.batch_norm is not None:
            self.shift = (self.shift + bias_delta).astype(np.float32)
            for v in self.batch_norm.weights:
                if variable_name(v) == "beta":
                    v.assign(np.asarray(v.numpy()) + bias_delta.astype(np.float32))
                    break
            else:
                raise ValueError(f"{self.batch_norm.name}: BatchNormalization without beta "
                                 "(center=False) cannot take a bias correction")


def keras_module(model):
    """Keras 3 for .keras/.h5 models, tf_keras (Keras 2) for models loaded from a SavedModel."""
    import keras

    if isinstance(model, keras.Model):
        return keras
    import tf_keras

    return tf_keras


def class_name(layer) -> str:
    return type(layer).__name__


def variable_name(v) -> str:
    """'gamma' for Keras 3's 'bn/gamma' and Keras 2's 'bn/gamma:0'."""
    return (getattr(v, "path", None) or v.name).split("/")[-1].split(":")[0]


def _is_keras_tensor(x) -> bool:
    return hasattr(x, "_keras_history") and hasattr(x, "shape")


def flatten(structure) -> list:
    import tensorflow as tf

    return tf.nest.flatten(structure, expand_composites=False)


def _node_call(node) -> tuple[tuple, dict]:
    """The (args, kwargs) a node was called with: Keras 3 or tf_keras."""
    arguments = getattr(node, "arguments", None)
    if arguments is not None:
        return tuple(arguments.args), dict(arguments.kwargs)
    return tuple(node.call_args), dict(node.call_kwargs)


def _node_layer(node):
    return getattr(node, "operation", None) or node.layer


def model_nodes(model) -> list:
    """The call nodes that make up `model` itself (reachable from its outputs), in
    topological order. Keras keeps more nodes on a layer than its model uses: a reloaded
    Sequential model has one per rebuild, a layer of a nested model one per outer call."""
    order, state = [], {}
    stack = [(t, False) for t in reversed(flatten(model.outputs))]
    while stack:
        tensor, expanded = stack.pop()
        history = getattr(tensor, "_keras_history", None)
        if history is None or history[0] is None:
            continue
        node = history[0]._inbound_nodes[history[1]]
        if expanded:
            if state.get(id(node)) != "done":
                state[id(node)] = "done"
                order.append(node)
            continue
        if id(node) in state:
            continue
        state[id(node)] = "open"
        stack.append((tensor, True))
        args, kwargs = _node_call(node)
        for x in reversed(flatten((args, kwargs))):
            if _is_keras_tensor(x):
                stack.append((x, False))
    return order


def _is_model(layer) -> bool:
    return hasattr(layer, "layers") and hasattr(layer, "inputs") and hasattr(layer, "outputs")


def _replay(model, values: dict) -> None:
    """Calls every layer of `model` again on the tensors in `values` (keyed by id of the
    model's own tensors), descending into nested models."""
    import tensorflow as tf

    for node in model_nodes(model):
        layer = _node_layer(node)
        args, kwargs = _node_call(node)
        if not args and not kwargs:  # an InputLayer
            continue
        mapped_args, mapped_kwargs = tf.nest.map_structure(
            lambda x: values[id(x)] if _is_keras_tensor(x) else x, (args, kwargs))
        outputs = flatten(node.outputs)
        if _is_model(layer):
            for inner, outer in zip(flatten(layer.inputs), flatten((mapped_args,
                                                                      mapped_kwargs))):
                values[id(inner)] = outer
            _replay(layer, values)
            results = [values[id(t)] for t in flatten(layer.outputs)]
        else:
            results = flatten(layer(*mapped_args, **mapped_kwargs))
        for t, r in zip(outputs, results):
            values[id(t)] = r


def normalize(model, input_shape: tuple[int, ...] | None = None):
    """A flat functional copy of `model` with one call node per layer, sharing nothing with
    it: Sequential models, nested models (a pretrained base inside a classifier) and the
    extra nodes Keras adds when it reloads a model all become one plain graph. `input_shape`
    (without batch) replaces dynamic dimensions of the input."""
    K = keras_module(model)
    inputs = flatten(model.inputs)
    if len(inputs) != 1:
        raise UserError(f"model '{model.name}' has {len(inputs)} inputs; only models with "
                        "one input are supported")
    shape = tuple(inputs[0].shape[1:])
    if input_shape is not None:
        if len(input_shape) != len(shape) or any(
                d is not None and d != g for d, g in zip(shape, input_shape)):
            raise UserError(f"--input_shape={','.join(map(str, input_shape))}: the model's "
                            f"input is {_shape_text(shape)}")
        shape = tuple(input_shape)
    if any(d is None for d in shape):
        raise UserError(f"model '{model.name}' takes inputs of shape {_shape_text(shape)}; "
                        "give the size to prune for with --input_shape=H,W,C")
    by_name: dict[str, set[int]] = {}
    for node in _all_nodes(model):
        by_name.setdefault(_node_layer(node).name, set()).add(id(_node_layer(node)))
    duplicated = sorted(n for n, ids in by_name.items() if len(ids) > 1)
    if duplicated:
        raise UserError(f"model '{model.name}': layer names {duplicated} occur more than once "
                        "(nested models with clashing names); rename them before saving")
    x = K.Input(shape=shape, name=inputs[0].name if "keras_tensor" not in inputs[0].name
                else None)
    values = {id(inputs[0]): x}
    _replay(model, values)
    outputs = [values[id(t)] for t in flatten(model.outputs)]
    flat = K.Model(x, outputs if len(outputs) > 1 else outputs[0], name=model.name)
    clean = K.Model.from_config(flat.get_config())
    for layer in clean.layers:
        if layer.weights:
            layer.set_weights(flat.get_layer(layer.name).get_weights())
    return clean


def _all_nodes(model) -> list:
    """Like model_nodes, descending into nested models (InputLayers excluded)."""
    out = []
    for node in model_nodes(model):
        layer = _node_layer(node)
        args, kwargs = _node_call(node)
        if not args and not kwargs:
            continue
        out.extend(_all_nodes(layer) if _is_model(layer) else [node])
    return out


def _shape_text(shape) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _producer(tensor):
    history = getattr(tensor, "_keras_history", None)
    return history[0] if history is not None else None


def batch_norm_fold(bn) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, shift) with which the BatchNormalization maps its input."""
    cfg = bn.get_config()
    weights = {variable_name(w): np.asarray(w.numpy(), np.float32) for w in bn.weights}
    var = weights["moving_variance"]
    gamma = weights.get("gamma", np.ones_like(var))
    beta = weights.get("beta", np.zeros_like(var))
    scale = gamma / np.sqrt(var + cfg["epsilon"])
    return scale.astype(np.float32), (beta - weights["moving_mean"] * scale).astype(np.float32)


def kernel_index(layer) -> int:
    """Index of the prunable kernel among the layer's weights (a SeparableConv2D's pointwise
    kernel follows its depthwise one)."""
    return 1 if class_name(layer) == "SeparableConv2D" else 0


def _spatial(shape) -> int:
    return int(np.prod([int(d) for d in shape[1:-1]])) if len(shape) > 2 else 1


def layer_macs(layer) -> int:
    """Dense multiply-adds of one inference (batch 1) of any layer; 0 for layers without a
    kernel. Grouped convs count their groups, transposed convs their input positions."""
    kind = class_name(layer)
    weights = layer.get_weights() if kind in _MAC_LAYERS else []
    if not weights:
        return 0
    if kind == "SeparableConv2D":
        return int(_spatial(layer.output.shape) * (weights[0].size + weights[1].size))
    if kind in ("Conv2DTranspose", "Conv1DTranspose", "Conv3DTranspose"):
        return int(_spatial(layer.input.shape) * weights[0].size)
    return int(_spatial(layer.output.shape) * weights[0].size)


_MAC_LAYERS = {"Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "DepthwiseConv1D",
               "SeparableConv2D", "SeparableConv1D", "Conv2DTranspose", "Conv1DTranspose",
               "Conv3DTranspose", "Dense", "EinsumDense"}


def prunable_layers(model) -> tuple[list[PrunableLayer], dict[str, str]]:
    """The prunable layers in model order, and {layer name: reason} for layers left alone."""
    skipped: dict[str, str] = {}
    result = []
    for layer in model.layers:
        # Exact class names: DepthwiseConv2D, Conv2DTranspose etc. are not our op.
        kind = class_name(layer)
        is_conv = kind in ("Conv2D", "SeparableConv2D")
        is_dense = kind == "Dense"
        if not (is_conv or is_dense):
            if layer.weights and kind not in ("BatchNormalization", "InputLayer"):
                skipped[layer.name] = f"{kind} runs as a builtin op and is not pruned"
            continue
        if len(layer._inbound_nodes) != 1:
            skipped[layer.name] = "shared layer (called more than once)"
            continue
        cfg = layer.get_config()
        if is_conv and cfg.get("groups", 1) != 1:
            skipped[layer.name] = "grouped Conv2D runs as a builtin op"
            continue
        if is_conv and cfg.get("data_format") == "channels_first":
            skipped[layer.name] = "channels_first Conv2D runs as a builtin op"
            continue
        if is_dense and len(layer.input.shape) != 2:
            skipped[layer.name] = "Dense on a tensor of rank > 2"
            continue
        out_c = int(layer.get_weights()[kernel_index(layer)].shape[-1])
        bn = following_batch_norm(layer)
        if bn is not None:
            scale, shift = batch_norm_fold(bn)
        else:
            scale, shift = np.ones(out_c, np.float32), np.zeros(out_c, np.float32)
        pl = PrunableLayer(layer.name, "conv2d" if is_conv else "dense", layer, bn, scale, shift)
        if kind == "Conv2D":
            pl.strides = tuple(int(s) for s in cfg["strides"])
            pl.dilations = tuple(int(d) for d in cfg["dilation_rate"])
            pl.padding = cfg["padding"].upper()
        # A SeparableConv2D's pointwise half is a 1x1, stride-1, VALID conv of its depthwise
        # output (layer_inputs computes that output).
        result.append(pl)
    if not result:
        raise UserError(f"model '{model.name}' has no Conv2D, SeparableConv2D or Dense layer "
                        "to prune")
    return result, skipped


def depthwise_half(layer, x: np.ndarray) -> np.ndarray:
    """The output of a SeparableConv2D's depthwise half on its input `x`."""
    import tensorflow as tf

    cfg = layer.get_config()
    dw = np.asarray(layer.get_weights()[0], np.float32)
    strides = [1, *(int(s) for s in cfg["strides"]), 1]
    rate = [int(d) for d in cfg["dilation_rate"]]
    out = tf.nn.depthwise_conv2d(x, dw, strides, cfg["padding"].upper(),
                                 dilations=rate if rate != [1, 1] else None)
    return out.numpy()


def layer_inputs(model, layers: list[PrunableLayer], probes: np.ndarray, batch_size: int = 64
                 ) -> list[np.ndarray]:
    """Each prunable layer's input activations on the probe inputs (for a SeparableConv2D,
    the input of its pointwise half)."""
    tap = keras_module(model).Model(model.inputs, [pl.layer.input for pl in layers])
    outs = tap.predict(probes, batch_size=batch_size, verbose=0)
    if not isinstance(outs, (list, tuple)):
        outs = [outs]
    return [depthwise_half(pl.layer, np.asarray(o, np.float32)) if pl.separable
            else np.asarray(o, np.float32) for pl, o in zip(layers, outs)]


# Layers that carry channel c of their input to channel c of their output.
_CHANNELWISE = {
    "BatchNormalization", "ReLU", "Activation", "LeakyReLU", "ELU", "PReLU",
    "MaxPooling2D", "AveragePooling2D", "Dropout", "SpatialDropout2D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "ZeroPadding2D", "Cropping2D", "UpSampling2D",
    "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten", "DepthwiseConv2D",
}
# Layers whose weights are per channel (last axis) and are sliced with the channels.
PER_CHANNEL_WEIGHTS = {"BatchNormalization", "PReLU", "DepthwiseConv2D"}
PRODUCERS = ("Conv2D", "SeparableConv2D", "Dense")


# Layers that combine their inputs channel by channel: all inputs and the output share one
# channel index space (a residual Add couples its branches' producers).
_ELEMENTWISE = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}


@dataclasses.dataclass
class ChannelGroup:
    """One channel index space (DepGraph's coupled group, Fang et al. CVPR 2023): the
    producers (Conv2D/SeparableConv2D/Dense) that create it, the layers that carry it
    (channel-wise layers and element-wise merges such as residual Adds), and the consumers
    that read it. Channel c is removed from every producer and member at once and folded
    into every consumer."""

    producers: list
    members: list
    consumers: list  # [(layer, taps per channel)]: taps > 1 after a Flatten

    @property
    def channels(self) -> int:
        p = self.producers[0]
        return int(p.get_weights()[kernel_index(p)].shape[-1])


def _is_elementwise(layer) -> bool:
    """An element-wise merge, or an element-wise op with a scalar (Keras 3 records `x + 3.0`
    in a functional model as an operation that is no layer): a constant of more than one
    value would have to lose the removed channels too."""
    if class_name(layer) not in _ELEMENTWISE:
        return False
    return all(_is_keras_tensor(x) or np.size(x) <= 1
               for node in layer._inbound_nodes for x in flatten(_node_call(node)))


def _is_channelwise(layer) -> bool:
    kind = class_name(layer)
    if kind not in _CHANNELWISE:
        return False
    cfg = layer.get_config()
    if kind == "DepthwiseConv2D" and cfg.get("depth_multiplier", 1) != 1:
        return False
    if kind == "Activation" and "softmax" in str(cfg.get("activation")):
        return False
    return True


def _consumer_problem(layer) -> str | None:
    cfg = layer.get_config()
    kind = class_name(layer)
    if kind == "Conv2D" and cfg.get("groups", 1) != 1:
        return f"'{layer.name}' is a grouped convolution"
    if kind == "SeparableConv2D" and cfg.get("depth_multiplier", 1) != 1:
        return f"'{layer.name}' has depth_multiplier > 1"
    if len(layer._inbound_nodes) != 1:
        return f"'{layer.name}' is shared"
    if kind == "Dense" and len(layer.input.shape) != 2:
        return f"'{layer.name}' is a Dense layer on a rank > 2 tensor"
    if not _has_bias_slot(layer):
        return f"'{layer.name}' has no bias (nor BatchNorm beta) to fold removed channels into"
    return None


def channel_groups(model) -> tuple[list[ChannelGroup], dict[str, str]]:
    """Every channel space whose channels can be removed, and {producer: reason} for the
    producers of the others."""
    outputs = {id(_producer(t)) for t in model.outputs}
    # Keras 3 keeps the operations of expressions on tensors (x + 3.0, x * y) apart from
    # its layers.
    layers = list(getattr(model, "operations", None) or model.layers)
    parent: dict[int, int] = {}

    def find(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    by_id = {id(layer): layer for layer in layers}
    inputs_of = {id(layer): [_producer(t) for t in flatten(layer.input)]
                 if class_name(layer) != "InputLayer" else [] for layer in layers}
    for layer in layers:
        parent[id(layer)] = id(layer)
    for layer in layers:
        if _is_channelwise(layer) or _is_elementwise(layer):
            for p in inputs_of[id(layer)]:
                parent[find(id(p))] = find(id(layer))
    spaces: dict[int, list] = {}
    for layer in layers:
        spaces.setdefault(find(id(layer)), []).append(layer)
    groups, refused = [], {}
    for members in spaces.values():
        producers = [m for m in members if class_name(m) in PRODUCERS]
        if not producers:
            continue
        member_ids = {id(m) for m in members}
        reason = None
        grouped = [p for p in producers if p.get_config().get("groups", 1) != 1]
        if grouped:  # its output channels are tied to its groups of inputs
            reason = f"'{grouped[0].name}' is a grouped convolution"
        roots = [m for m in members if class_name(m) not in PRODUCERS and not (
            _is_channelwise(m) or _is_elementwise(m))]
        if roots and reason is None:
            kind = class_name(roots[0])
            reason = ("channels also come from the model input" if kind == "InputLayer" else
                      f"channels also come from '{roots[0].name}' ({kind})")
        consumers = []
        for layer in layers:
            if reason is not None:
                break
            if id(layer) in member_ids:
                if id(layer) in outputs:
                    reason = f"'{layer.name}' is a model output"
                elif len(layer._inbound_nodes) != 1:
                    reason = f"'{layer.name}' is shared"
                if reason is not None or class_name(layer) not in PRODUCERS:
                    continue
                # A producer may also read the space (y = x + conv(x)): it is a consumer too.
            read = [p for p in inputs_of[id(layer)] if id(p) in member_ids]
            if not read:
                continue
            if class_name(layer) not in PRODUCERS:
                reason = f"'{layer.name}' ({class_name(layer)}) couples or reshapes channels"
            elif len(read) != 1:
                reason = f"'{layer.name}' reads the channels twice"
            else:
                reason = _consumer_problem(layer)
                source = read[0]
                taps = (int(np.prod(source.input.shape[1:-1]))
                        if class_name(source) == "Flatten" else 1)
                consumers.append((layer, taps))
        if reason is None and not consumers:
            reason = "no layer reads its channels"
        if reason is None:
            path = [m for m in members if class_name(m) not in PRODUCERS]
            groups.append(ChannelGroup(producers, path, consumers))
        else:
            for p in producers:
                refused[p.name] = reason
    order = {id(layer): i for i, layer in enumerate(layers)}
    groups.sort(key=lambda g: order[id(g.producers[0])])
    return groups, refused


def _has_bias_slot(layer) -> bool:
    if layer.get_config().get("use_bias", False):
        return True
    bn = following_batch_norm(layer)
    return bn is not None and bn.get_config().get("center", True)


def _next_layers(layer) -> list:
    return [getattr(n, "operation", None) or n.outbound_layer for n in layer._outbound_nodes]


def following_batch_norm(layer):
    """The BatchNormalization (on the channel axis) that is the layer's only consumer: it
    folds into the layer's kernel and bias."""
    nxt = _next_layers(layer)
    if len(nxt) != 1 or class_name(nxt[0]) != "BatchNormalization":
        return None
    return nxt[0] if _on_channel_axis(nxt[0]) else None


def _on_channel_axis(bn) -> bool:
    axis = bn.get_config()["axis"]
    axis = axis if isinstance(axis, int) else axis[0]
    return axis in (-1, len(bn.input.shape) - 1)


# Layers that act on each value alone and hold no state at inference: the statistics a
# BatchNormalization recorded can be carried through them.
_POINTWISE = {"ReLU", "Activation", "LeakyReLU", "ELU", "Dropout", "SpatialDropout2D",
              "GaussianNoise", "GaussianDropout", "AlphaDropout"}


def batch_norm_before(layer):
    """(bn, [layers from bn to `layer`, in order]) where `layer` reads a channel-last
    BatchNormalization through pointwise layers only (an activation), else None."""
    chain = []
    source = _producer(layer.input) if len(getattr(layer, "_inbound_nodes", [])) == 1 else None
    while source is not None and class_name(source) in _POINTWISE and _is_channelwise(source):
        chain.append(source)
        source = _producer(source.input)
    if source is None or class_name(source) != "BatchNormalization" or \
            not _on_channel_axis(source):
        return None
    return source, chain[::-1]
