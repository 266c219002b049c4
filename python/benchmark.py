"""Times a pruned .tflite (with our delegate) against a baseline .tflite (stock LiteRT with
XNNPACK) on this machine, side by side, and prints one JSON line. Run it on the target device
to see what pruning buys there.

    ./bazelw run //python:benchmark -- --model=/tmp/demo_pruned.tflite --baseline=demo \\
        [--batch=1] [--threads=1]
"""

from __future__ import annotations

import json
import sys

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "The pruned .tflite (runs with our delegate).")
flags.DEFINE_string("baseline", None, "Optional model to compare with, run by the stock "
                    "interpreter: a .tflite, or a Keras model (or 'demo') converted as is.")
flags.DEFINE_integer("batch", 1, "Batch size of the random input.", lower_bound=1)
flags.DEFINE_integer("threads", 1, "Interpreter threads, both models.", lower_bound=1)
flags.DEFINE_integer("rounds", 5, "Alternating timing rounds.", lower_bound=1)
flags.DEFINE_float("min_seconds", 0.2, "Minimum time of one round.", lower_bound=0.0)
flags.DEFINE_string("kernel", "", "Our kernel variant ('' = the fastest on this CPU).")
flags.mark_flag_as_required("model")


def _load(flag: str, path: str, keras_ok: bool = False) -> tuple[bytes, tuple[int, ...]]:
    from ai_edge_litert import interpreter as litert

    from hybrid_pruning import convert, io

    if keras_ok and not path.endswith(".tflite"):
        content = convert.to_tflite(io.load_keras_model(path))
    elif not path.endswith(".tflite"):
        raise io.UserError(f"--{flag}={path}: expected a .tflite file")
    else:
        try:
            content = open(path, "rb").read()
        except OSError as e:
            raise io.UserError(f"--{flag}={path}: {e.strerror}") from e
    try:
        details = litert.Interpreter(model_content=content).get_input_details()
    except (ValueError, RuntimeError) as e:
        raise io.UserError(f"--{flag}={path}: not a TFLite model ({e})") from e
    if len(details) != 1 or details[0]["dtype"] != np.float32:
        raise io.UserError(f"--{flag}={path}: needs exactly one float32 input")
    return content, tuple(int(d) for d in details[0]["shape"][1:])


def main(argv):
    del argv
    from hybrid_pruning import io, timing

    try:
        model, shape = _load("model", io.user_path(FLAGS.model))
        baseline = None
        if FLAGS.baseline:
            baseline, base_shape = _load("baseline", io.model_path(FLAGS.baseline),
                                         keras_ok=True)
            if base_shape != shape:
                raise io.UserError(f"--baseline: input shape {base_shape} differs from "
                                   f"--model's {shape}")
        x = np.random.default_rng(0).uniform(0, 1, (FLAGS.batch, *shape)).astype(np.float32)
        invokes = [timing.invoker(model, x, True, FLAGS.threads, FLAGS.kernel)]
        if baseline is not None:
            invokes.append(timing.invoker(baseline, x, False, FLAGS.threads))
        times = timing.best_times(*invokes, rounds=FLAGS.rounds, min_seconds=FLAGS.min_seconds)
    except (io.UserError, RuntimeError, ValueError) as e:
        sys.exit(f"benchmark: error: {e}")
    result = {"model_ms": times[0] * 1e3, "batch": FLAGS.batch, "threads": FLAGS.threads,
              "kernel": FLAGS.kernel or "fastest"}
    if baseline is not None:
        result["baseline_ms"] = times[1] * 1e3
        result["speedup"] = times[1] / times[0]
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
