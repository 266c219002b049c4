"""What a node of ours costs a whole model beyond its own time.

The latency objective prices a layer on our op by single-layer models (targets.HostProfile):
our op alone in the interpreter against the builtin alone. In a model, a node of ours sits
between XNNPACK's: XNNPACK's graph is split around it, and its thread pool stops and starts
again. This benchmark measures what that adds, per dtype, thread count, layer size and
sparsity: three 3x3 convs in a row (Keras, converted by the stock converter), the middle one
rewritten to our op, against the same model all builtin; and the middle conv alone on each,
all four timed in the same alternating rounds. overhead = (model with ours - stock model) -
(ours alone - builtin alone). Where it is large, the single-layer tables promise savings that
the whole model does not see (the measured fallback then puts the layer back).
"""

from __future__ import annotations

import numpy as np
from absl import app, flags

import bench_results

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "Markdown file to write.")
flags.DEFINE_integer("rounds", 12, "Alternating timing rounds per measurement.")
flags.DEFINE_float("min_seconds", 0.01, "Minimum time of one timing round.")

SIZES = (16, 32)
SPARSITIES = (0.0, 0.7, 0.9, 0.98)
CHANNELS = 32


def _chain(keras, size: int, middle: np.ndarray | None):
    """Three 3x3 convs of CHANNELS channels on a size x size input; `middle` (HWIO) replaces
    the middle conv's kernel."""
    rng = np.random.default_rng(0)
    inputs = keras.Input((size, size, CHANNELS))
    y = inputs
    convs = []
    for _ in range(3):
        conv = keras.layers.Conv2D(CHANNELS, 3, padding="same", activation="relu")
        y = conv(y)
        convs.append(conv)
    model = keras.Model(inputs, y)
    for conv in convs:
        kernel, bias = conv.get_weights()
        conv.set_weights([rng.standard_normal(kernel.shape).astype(np.float32) * 0.1, bias])
    if middle is not None:
        convs[1].set_weights([middle, convs[1].get_weights()[1]])
    return model


def _row(dtype: str, threads: int, size: int, sparsity: float) -> str:
    import keras

    from hybrid_pruning import convert, targets, timing, tflite_model, tflite_rewrite

    int8 = dtype == "int8"
    block = 4 if int8 else 1
    shape = targets.ConvShape(size, size, CHANNELS, CHANNELS, 3, 3, (1, 1), (1, 1), "SAME")
    rng = np.random.default_rng(1)
    ohwi = targets.random_filter(rng, shape, sparsity, block, input_groups=int8)
    model = _chain(keras, size, ohwi.transpose(1, 2, 3, 0) * 0.1)
    probes = rng.random((16, size, size, CHANNELS)).astype(np.float32)
    stock = convert.to_tflite(model, dtype, probes)
    parsed = tflite_model.read(stock)
    convs = [i for i, op in enumerate(parsed.subgraphs[0].operators)
             if tflite_model.builtin_code(parsed, op) == tflite_model.BuiltinOperator.CONV_2D]
    ours, _ = tflite_rewrite.rewrite(stock, min_sparsity=0.0, only={convs[1]},
                                     block_sizes={convs[1]: block})
    # The middle conv alone, as the latency tables time it.
    x, bias, quant = targets.timing_layer_data(rng, shape, dtype)
    w = targets.timing_weights(ohwi, dtype)
    alone_builtin = tflite_model.single_conv_model(x.shape, w, bias, shape.geometry, "builtin",
                                                   int8=quant)
    alone_ours = tflite_model.single_conv_model(x.shape, w, bias, shape.geometry, "hybrid",
                                                block_size=block, int8=quant)
    t = timing.best_times(
        timing.invoker(stock, probes[:1], ours=False, threads=threads),
        timing.invoker(ours, probes[:1], ours=True, threads=threads),
        timing.invoker(alone_builtin, x, ours=False, threads=threads),
        timing.invoker(alone_ours, x, ours=True, threads=threads),
        rounds=FLAGS.rounds, min_seconds=FLAGS.min_seconds)
    us = [v * 1e6 for v in t]
    overhead = (us[1] - us[0]) - (us[3] - us[2])
    return (f"| {dtype} | {threads} | {size}x{size}x{CHANNELS} | {sparsity:.0%} | "
            f"{us[0]:.1f} | {us[1]:.1f} | {us[2]:.1f} | {us[3]:.1f} | "
            f"{us[2] - us[3]:+.1f} | {us[0] - us[1]:+.1f} | {overhead:.1f} |")


def main(argv):
    del argv
    from hybrid_pruning import targets

    lines = [
        "# A node of ours in a model: what it costs beyond its own time",
        "",
        bench_results.machine(),
        bench_results.command("node_overhead_bench"),
        "",
        "Three 3x3 convs in a row (stride 1, SAME, ReLU, "
        f"{CHANNELS} channels), converted by the stock converter (int8: full-integer, "
        "calibrated on random inputs); 'ours' rewrites the middle one to our op at the "
        "sparsity shown (int8: 4 x 4 blocks; float: single weights). Alone: the middle conv "
        "as a one-op model, as the latency tables time it. All four timed in the same "
        "alternating rounds (best round, microseconds). Saved = what replacing the middle conv "
        "saves alone and in the model; overhead = saved alone - saved in the model: what the "
        "single-layer tables miss.",
        "",
        "| dtype | threads | layer | sparsity | model, builtin | model, ours | alone, builtin "
        "| alone, ours | saved alone | saved in the model | overhead |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for dtype in ("float32", "int8"):
        for threads in targets.thread_counts("1,all"):
            for size in SIZES:
                for sparsity in SPARSITIES:
                    lines.append(_row(dtype, threads, size, sparsity))
                    print(lines[-1], flush=True)
    bench_results.emit(lines, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
