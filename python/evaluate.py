"""Top-1 accuracy of a .keras model, or of a .tflite model running our ops, as one JSON line.

    ./bazelw run //python:evaluate -- --model=/tmp/demo_pruned.tflite [--data=file.npz]
"""

from __future__ import annotations

import json
import sys

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A .keras/.h5 model, a .tflite model, or 'demo'.")
flags.DEFINE_string("data", None, "npz with arrays x (NHWC float32) and y (labels); default: "
                    "the digits test split.")
flags.DEFINE_integer("num_threads", 1, "Interpreter threads.", lower_bound=1)
flags.DEFINE_integer("batch_size", 256, "Inference batch size.", lower_bound=1)
flags.mark_flag_as_required("model")


def predict_tflite(path: str, x: np.ndarray, batch_size: int, num_threads: int) -> np.ndarray:
    from hybrid_pruning import runtime

    it = runtime.make_interpreter(model_path=path, num_threads=num_threads)
    inp = it.get_input_details()[0]
    want = tuple(inp["shape"][1:])
    if x.shape[1:] != want:
        raise ValueError(f"--data: samples have shape {x.shape[1:]}, the model expects {want}")
    outs = []
    for start in range(0, len(x), batch_size):
        chunk = x[start:start + batch_size]
        it.resize_tensor_input(inp["index"], chunk.shape)
        it.allocate_tensors()
        it.set_tensor(inp["index"], chunk)
        it.invoke()
        outs.append(it.get_tensor(it.get_output_details()[0]["index"]).copy())
    return np.concatenate(outs)


def _input_size(path: str, keras_model) -> int:
    if keras_model is not None:
        return int(keras_model.inputs[0].shape[1])
    from hybrid_pruning import runtime

    return int(runtime.make_interpreter(model_path=path).get_input_details()[0]["shape"][1])


def main(argv):
    del argv
    from hybrid_pruning import data, io

    try:
        path = io.model_path(FLAGS.model)
        keras_model = None if path.endswith(".tflite") else io.load_keras_model(path)
        if FLAGS.data:
            x, y = data.load_npz(io.user_path(FLAGS.data))
        else:  # the digits test split at the model's input size
            _, _, x, y = data.digits_split(_input_size(path, keras_model))
        if keras_model is None:
            try:
                scores = predict_tflite(path, x, FLAGS.batch_size, FLAGS.num_threads)
            except (ValueError, RuntimeError) as e:
                raise io.UserError(f"--model={path}: {e}") from e
        else:
            scores = keras_model.predict(x, batch_size=FLAGS.batch_size, verbose=0)
    except (io.UserError, ValueError) as e:
        sys.exit(f"evaluate: error: {e}")
    accuracy = float(np.mean(np.asarray(scores).argmax(-1) == y))
    print(json.dumps({"model": path, "samples": int(len(y)), "top1_accuracy": accuracy}))


if __name__ == "__main__":
    app.run(main)
