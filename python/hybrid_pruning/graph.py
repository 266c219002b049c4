"""The one place that knows Keras: which layers can be pruned, and their BatchNorm folding.

Everything after this module works on numpy arrays in TFLite's layouts.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hybrid_pruning.io import UserError


@dataclasses.dataclass
class PrunableLayer:
    """A Conv2D or Dense layer, with the BatchNormalization that directly follows it (if any)
    folded into an effective kernel and bias: what the TFLite converter will emit."""

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
    def kernel(self) -> np.ndarray:
        """The layer's own kernel (HWIO for conv, IO for dense)."""
        return np.asarray(self.layer.get_weights()[0], np.float32)

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
        bias = weights[1] if len(weights) > 1 else np.zeros(self.scale.shape, np.float32)
        return (bias * self.scale + self.shift).astype(np.float32)

    @property
    def can_shift_bias(self) -> bool:
        """Whether the folded bias can be changed: the layer has a bias or a folded BatchNorm."""
        if self.batch_norm is not None:
            return any(variable_name(v) == "beta" for v in self.batch_norm.weights)
        return len(self.layer.get_weights()) > 1

    def set_kernel(self, kernel: np.ndarray) -> None:
        weights = self.layer.get_weights()
        weights[0] = kernel.astype(weights[0].dtype)
        self.layer.set_weights(weights)

    def set_folded(self, folded_kernel: np.ndarray, bias_delta: np.ndarray | None = None) -> None:
        """Writes a folded kernel back through the BatchNorm scale, and adds `bias_delta` to the
        folded bias (through the BatchNorm's beta, or the layer's own bias)."""
        safe = np.where(np.abs(self.scale) > 1e-12, self.scale, 1.0)
        kernel = np.where(np.abs(self.scale) > 1e-12, folded_kernel / safe, 0.0)
        weights = self.layer.get_weights()
        weights[0] = kernel.astype(weights[0].dtype)
        if bias_delta is not None and self.batch_norm is None:
            weights[1] = (weights[1] + bias_delta).astype(weights[1].dtype)
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


def prunable_layers(model) -> tuple[list[PrunableLayer], dict[str, str]]:
    """The prunable layers in model order, and {layer name: reason} for layers left alone."""
    skipped: dict[str, str] = {}
    result = []
    for layer in model.layers:
        # Exact class names: DepthwiseConv2D, SeparableConv2D etc. are not our op.
        is_conv = class_name(layer) == "Conv2D"
        is_dense = class_name(layer) == "Dense"
        if not (is_conv or is_dense):
            if layer.weights and class_name(layer) != "BatchNormalization":
                skipped[layer.name] = f"{class_name(layer)} is not pruned"
            continue
        if len(layer._inbound_nodes) != 1:
            skipped[layer.name] = "shared layer (called more than once)"
            continue
        cfg = layer.get_config()
        if is_conv and (cfg.get("groups", 1) != 1 or cfg.get("data_format") == "channels_first"):
            skipped[layer.name] = "grouped or channels_first Conv2D"
            continue
        if is_dense and len(layer.input.shape) != 2:
            skipped[layer.name] = "Dense on a tensor of rank > 2"
            continue
        out_c = int(layer.get_weights()[0].shape[-1])
        bn = following_batch_norm(layer)
        if bn is not None:
            scale, shift = batch_norm_fold(bn)
        else:
            scale, shift = np.ones(out_c, np.float32), np.zeros(out_c, np.float32)
        pl = PrunableLayer(layer.name, "conv2d" if is_conv else "dense", layer, bn, scale, shift)
        if is_conv:
            pl.strides = tuple(int(s) for s in cfg["strides"])
            pl.dilations = tuple(int(d) for d in cfg["dilation_rate"])
            pl.padding = cfg["padding"].upper()
        result.append(pl)
    if not result:
        raise UserError(f"model '{model.name}' has no Conv2D or Dense layer to prune")
    return result, skipped


def layer_inputs(model, layers: list[PrunableLayer], probes: np.ndarray, batch_size: int = 64
                 ) -> list[np.ndarray]:
    """Each prunable layer's input activations on the probe inputs."""
    tap = keras_module(model).Model(model.inputs, [pl.layer.input for pl in layers])
    outs = tap.predict(probes, batch_size=batch_size, verbose=0)
    if not isinstance(outs, (list, tuple)):
        outs = [outs]
    return [np.asarray(o, np.float32) for o in outs]


# Layers that carry channel c of their input to channel c of their output.
_CHANNELWISE = {
    "BatchNormalization", "ReLU", "Activation", "LeakyReLU", "ELU", "MaxPooling2D",
    "AveragePooling2D", "Dropout", "SpatialDropout2D", "ZeroPadding2D", "GlobalAveragePooling2D",
    "GlobalMaxPooling2D", "Flatten", "DepthwiseConv2D",
}


@dataclasses.dataclass
class ChannelChain:
    """Producer (Conv2D/Dense) -> channel-wise layers -> one consumer (Conv2D/Dense): the
    producer's output channels can be removed by editing only these layers."""

    producer: object
    path: list
    consumer: object
    taps_per_channel: int  # consumer input columns per channel: positions after a Flatten


def _next_layers(layer) -> list:
    return [getattr(n, "operation", None) or n.outbound_layer for n in layer._outbound_nodes]


def channel_chains(model) -> tuple[list[ChannelChain], dict[str, str]]:
    """Every producer whose channels can be removed, and {producer: reason} for the others."""
    outputs = {id(_producer(t)) for t in model.outputs}
    chains, refused = [], {}
    for producer in model.layers:
        if class_name(producer) not in ("Conv2D", "Dense") or id(producer) in outputs:
            continue
        path, layer, taps, reason = [], producer, 1, None
        while True:
            nxt = _next_layers(layer)
            if len(nxt) != 1:
                reason = f"output of '{layer.name}' feeds {len(nxt)} layers"
                break
            layer = nxt[0]
            kind = class_name(layer)
            if kind in ("Conv2D", "Dense"):
                cfg = layer.get_config()
                if kind == "Conv2D" and cfg.get("groups", 1) != 1:
                    reason = f"'{layer.name}' is a grouped convolution"
                elif len(layer._inbound_nodes) != 1:
                    reason = f"'{layer.name}' is shared"
                break
            if kind not in _CHANNELWISE:
                reason = f"'{layer.name}' ({kind}) couples or reshapes channels"
                break
            if kind == "DepthwiseConv2D" and layer.get_config().get("depth_multiplier", 1) != 1:
                reason = f"'{layer.name}' has depth_multiplier > 1"
                break
            if id(layer) in outputs:
                reason = f"'{layer.name}' is a model output"
                break
            if kind == "Flatten":
                taps = int(np.prod(layer.input.shape[1:-1]))
            path.append(layer)
        if reason is None and class_name(layer) == "Dense" and len(layer.input.shape) != 2:
            reason = f"'{layer.name}' is a Dense layer on a rank > 2 tensor"
        if reason is None and not _has_bias_slot(layer):
            reason = f"'{layer.name}' has no bias (nor BatchNorm beta) to fold removed channels into"
        if reason is None:
            chains.append(ChannelChain(producer, path, layer, taps))
        else:
            refused[producer.name] = reason
    return chains, refused


def _has_bias_slot(layer) -> bool:
    if layer.get_config().get("use_bias", False):
        return True
    bn = following_batch_norm(layer)
    return bn is not None and bn.get_config().get("center", True)


def following_batch_norm(layer):
    """The BatchNormalization (on the channel axis) that is the layer's only consumer: it
    folds into the layer's kernel and bias."""
    nxt = _next_layers(layer)
    if len(nxt) != 1 or class_name(nxt[0]) != "BatchNormalization":
        return None
    bn = nxt[0]
    axis = bn.get_config()["axis"]
    axis = axis if isinstance(axis, int) else axis[0]
    return bn if axis in (-1, len(bn.input.shape) - 1) else None
