"""Times HybridSparseConv2D (each kernel variant) against the builtin CONV_2D with XNNPACK on
the same weights, side by side in one process, and prints ratios.

    ./bazelw run //tests/bench:conv_bench -- [--threads=1] [--output=FILE.md]

The FLOP limit is dense time x (1 - weight sparsity): what a perfect sparse kernel would reach.
"""

from __future__ import annotations

import datetime
import platform
import time

import numpy as np
from absl import app, flags

from hybrid_pruning import io, op_format, runtime, tflite_model

FLAGS = flags.FLAGS
flags.DEFINE_integer("threads", 1, "Interpreter threads for both sides.")
flags.DEFINE_float("min_seconds", 0.3, "Minimum timing per measurement.")
flags.DEFINE_string("output", None, "Markdown file to write.")
flags.DEFINE_list("kernels", ["avx2"], "Kernel variants of our op to time.")

# (name, input HxW, in_c, out_c, kernel, stride)
SHAPES = [
    ("1x1 56x56 64->64", 56, 64, 64, 1, 1),
    ("1x1 28x28 128->128", 28, 128, 128, 1, 1),
    ("3x3 56x56 32->32", 56, 32, 32, 3, 1),
    ("3x3 28x28 64->64", 28, 64, 64, 3, 1),
    ("demo conv2d_5 3x3 4x4 128->128", 4, 128, 128, 3, 1),
]
SPARSITIES = [0.0, 0.5, 0.8, 0.9, 0.95]


def _seconds(it, x) -> float:
    inp = it.get_input_details()[0]["index"]
    it.set_tensor(inp, x)
    it.invoke()  # warm up
    runs, start = 0, time.perf_counter()
    while True:
        it.invoke()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= FLAGS.min_seconds and runs >= 3:
            return elapsed / runs


def _interpreter(model: bytes, x, ours: bool, kernel: str = ""):
    it = runtime.make_interpreter(model_content=model, num_threads=FLAGS.threads,
                                  with_ops=ours, kernel=kernel)
    it.resize_tensor_input(it.get_input_details()[0]["index"], x.shape)
    it.allocate_tensors()
    return it


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    kernels = FLAGS.kernels
    lines = [
        "# HybridSparseConv2D vs builtin CONV_2D (XNNPACK)",
        "",
        f"Date: {datetime.date.today()}. Machine: {platform.machine()}, threads {FLAGS.threads}.",
        "Command: `./bazelw run //tests/bench:conv_bench -- --threads=N --output=...`",
        "",
        "Ratio = builtin time / our time (> 1: ours is faster). Unstructured weight sparsity, "
        "dense inputs (no activation zeros).",
        "",
        "| layer | weight sparsity | builtin ms | GFLOP/s builtin | "
        + " | ".join(f"{k} ms | {k} ratio" for k in kernels) + " | FLOP-limit ratio |",
        "| --- | ---: | ---: | ---: | " + " | ".join("---: | ---:" for _ in kernels) + " | ---: |",
    ]
    print("\n".join(lines), flush=True)
    for name, hw, cin, cout, k, stride in SHAPES:
        g = op_format.ConvGeometry(k, k, cin, cout, stride, stride, 1, 1, "SAME", "RELU")
        x = rng.standard_normal((1, hw, hw, cin)).astype(np.float32)
        flops = 2.0 * hw * hw * k * k * cin * cout / stride ** 2
        for sparsity in SPARSITIES:
            w = rng.standard_normal((cout, k, k, cin)).astype(np.float32)
            w[rng.random(w.shape) < sparsity] = 0
            b = rng.standard_normal(cout).astype(np.float32)
            builtin = _seconds(_interpreter(
                tflite_model.single_conv_model(x.shape, w, b, g, "builtin"), x, False), x)
            ours_model = tflite_model.single_conv_model(x.shape, w, b, g, "hybrid")
            cells = []
            for kernel in kernels:
                t = _seconds(_interpreter(ours_model, x, True, kernel), x)
                cells.append(f"{t * 1e3:.3f} | {builtin / t:.2f}")
            limit = 1 / max(1 - sparsity, 1e-9)
            lines.append(f"| {name} | {sparsity:.0%} | {builtin * 1e3:.3f} | "
                         f"{flops / builtin / 1e9:.1f} | " + " | ".join(cells) + f" | {limit:.1f} |")
            print(lines[-1], flush=True)
    if FLAGS.output:
        io.write_bytes_atomic(io.user_path(FLAGS.output), ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    app.run(main)
