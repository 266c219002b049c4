"""Keras model -> TFLite flatbuffer with the stock converter."""

from __future__ import annotations

import contextlib
import io as _io

from hybrid_pruning.io import UserError


def to_tflite(model) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    try:
        # The converter prints the exported signature to stdout; keep our output readable.
        with contextlib.redirect_stdout(_io.StringIO()):
            return bytes(converter.convert())
    except Exception as e:  # noqa: BLE001 - the converter raises many types
        raise UserError(f"model '{model.name}': the TFLite converter failed: {e}") from e
