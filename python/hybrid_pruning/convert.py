"""Keras model -> TFLite flatbuffer with the stock converter."""

from __future__ import annotations

import contextlib
import io as _io

import numpy as np

from hybrid_pruning import tflite_model
from hybrid_pruning.io import UserError


QUANTIZATIONS = ("float32", "dynamic", "int8")


def to_tflite(model, quantization: str = "float32", probes: np.ndarray | None = None) -> bytes:
    """The stock converter's output. quantization: "float32" (as is), "dynamic" (int8
    weights, float activations: the converter's data-free Optimize.DEFAULT), "int8" (full
    integer: int8 weights per channel and int8 activations, calibrated on `probes` as the
    representative data, so still data-free; float input and output)."""
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "int8":
        if probes is None or len(probes) == 0:
            raise ValueError("int8 quantization needs probe inputs to calibrate on")
        calibration = np.asarray(probes, np.float32)
        converter.representative_dataset = lambda: ([calibration[i:i + 1]]
                                                    for i in range(len(calibration)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        # The converter prints the exported signature to stdout; keep our output readable.
        with contextlib.redirect_stdout(_io.StringIO()):
            return bytes(converter.convert())
    except Exception as e:  # noqa: BLE001 - the converter raises many types
        raise UserError(f"model '{model.name}': the TFLite converter failed: {e}") from e


def _as_held(pl) -> np.ndarray:
    """A prunable layer's folded kernel in the layout its TFLite op holds."""
    k = pl.folded_kernel
    return np.asarray(np.transpose(k, (3, 0, 1, 2)) if pl.kind == "conv2d" else k.T,
                      np.float32)


class Reconverter:
    """to_tflite for a model whose prunable layers change weights between calls while its
    graph stays (the pruning search): converts once, then writes every layer's folded kernel
    and bias into that flatbuffer. The converter's export and graph passes cost seconds per
    call; this costs milliseconds. Where the first conversion cannot be patched in place (a
    layer not found as one op's own constants), every call converts."""

    def __init__(self, model, layers):
        self.model, self.layers = model, layers
        self.conversions = 1
        self.template = tflite_model.read(to_tflite(model))
        self.slots = tflite_model.own_weights(
            self.template, {pl.name: (_as_held(pl), pl.folded_bias if pl.can_shift_bias
                                      else None) for pl in layers})

    def __call__(self) -> bytes:
        if self.slots is None:
            self.conversions += 1
            return to_tflite(self.model)
        for pl in self.layers:
            kernel_buffer, bias_buffer, scale = self.slots[pl.name]
            kernel = _as_held(pl)
            tflite_model.set_buffer(self.template, kernel_buffer,
                                    kernel if scale is None else kernel * scale)
            if bias_buffer is not None:
                tflite_model.set_buffer(self.template, bias_buffer, pl.folded_bias)
        return tflite_model.write(self.template)
