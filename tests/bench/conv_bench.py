"""Times HybridSparseConv2D against TFLite's builtin CONV_2D (XNNPACK on, same threads) on the
same weights, side by side in one process, and prints ratios; then the whole demo model,
pruned with our op vs unpruned with stock kernels.

    ./bazelw run //tests/bench:conv_bench -- --output=$PWD/benchmarks/results/conv_bench_x86.md

Ratio = builtin time / our time (> 1: ours is faster). The FLOP limit is what a perfect sparse
kernel would reach: dense time x (1 - weight sparsity), i.e. ratio 1 / (1 - sparsity).
Timings alternate between the two sides for several rounds and keep each side's fastest
round (hybrid_pruning.timing).
"""

from __future__ import annotations

import numpy as np
from absl import app, flags, logging

import bench_results
from hybrid_pruning import io, op_format, runtime, targets, timing, tflite_model

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "Markdown file to write.")
flags.DEFINE_string("kernel", "", "Our kernel variant ('' = the fastest on this CPU).")
flags.DEFINE_float("min_seconds", 0.05, "Minimum time of one timing round.")
flags.DEFINE_integer("rounds", 5, "Alternating timing rounds per measurement.")
flags.DEFINE_bool("model", True, "Also time the whole demo model, pruned four ways (~5 min).")
flags.DEFINE_bool("layers", True, "Time single layers.")
flags.DEFINE_bool("int8", True, "Time single int8 layers: our int8 op against the builtin int8 "
                  "CONV_2D (XNNPACK).")

# (name, input HxW, in_c, out_c, kernel, stride): MobileNet-like pointwise and 3x3 layers, and
# the demo model's largest layer.
SHAPES = [
    ("1x1 112x112 32->64", 112, 32, 64, 1, 1),
    ("1x1 56x56 128->128", 56, 128, 128, 1, 1),
    ("1x1 28x28 256->256", 28, 256, 256, 1, 1),
    ("3x3 56x56 64->64", 56, 64, 64, 3, 1),
    ("3x3 28x28 128->128", 28, 128, 128, 3, 1),
    ("3x3/2 56x56 64->128", 56, 64, 128, 3, 2),
    ("demo conv2d_5 3x3 4x4 128->128", 4, 128, 128, 3, 1),
]
SPARSITIES = [0.0, 0.5, 0.7, 0.8, 0.9, 0.95]
BLOCK = 4  # co-designed pruning: blocks of 4 output channels share one sparsity pattern


def _invoker(model: bytes, x: np.ndarray, ours: bool, threads: int):
    return timing.invoker(model, x, ours, threads, FLAGS.kernel)


def _times(*invokes) -> list[float]:
    return timing.best_times(*invokes, rounds=FLAGS.rounds, min_seconds=FLAGS.min_seconds)


def _weights(rng, cout: int, k: int, cin: int, sparsity: float, block: int) -> np.ndarray:
    # Only the filter's own dimensions matter to random_filter.
    shape = targets.ConvShape(1, 1, cin, cout, k, k, (1, 1), (1, 1), "SAME")
    return targets.random_filter(rng, shape, sparsity, block)


def _layer(rng, hw: int, cin: int, cout: int, k: int, stride: int):
    """Geometry, a random input and bias of one benchmark layer (SAME padding, fused ReLU)."""
    g = op_format.ConvGeometry(k, k, cin, cout, stride, stride, 1, 1, "SAME", "RELU")
    x = rng.standard_normal((1, hw, hw, cin)).astype(np.float32)
    return g, x, rng.standard_normal(cout).astype(np.float32)


def _conv_models(x, w, b, g, block: int):
    return (tflite_model.single_conv_model(x.shape, w, b, g, "builtin"),
            tflite_model.single_conv_model(x.shape, w, b, g, "hybrid", block_size=block))


def weight_sparsity_table(rng, lines: list[str]) -> None:
    lines += [
        "## Weight sparsity, 1 thread, dense inputs",
        "",
        f"Unstructured = any zero pattern (block 1); block {BLOCK} = pruned in blocks of "
        f"{BLOCK} output channels sharing a pattern (what `--block_size={BLOCK}` prunes).",
        "",
        "| layer | weight sparsity | builtin ms | builtin GFLOP/s | ours ms, unstructured | "
        f"ratio, unstructured | ours ms, block {BLOCK} | ratio, block {BLOCK} | FLOP-limit ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    print("\n".join(lines[-6:]), flush=True)
    for name, hw, cin, cout, k, stride in SHAPES:
        g, x, b = _layer(rng, hw, cin, cout, k, stride)
        flops = 2.0 * (-(-hw // stride)) ** 2 * k * k * cin * cout
        for sparsity in SPARSITIES:
            builtin, ours1 = _conv_models(x, _weights(rng, cout, k, cin, sparsity, 1), b, g, 1)
            _, ours4 = _conv_models(x, _weights(rng, cout, k, cin, sparsity, BLOCK), b, g, BLOCK)
            tb, t1, t4 = _times(_invoker(builtin, x, False, 1), _invoker(ours1, x, True, 1),
                                _invoker(ours4, x, True, 1))
            lines.append(
                f"| {name} | {sparsity:.0%} | {tb * 1e3:.3f} | {flops / tb / 1e9:.1f} | "
                f"{t1 * 1e3:.3f} | {tb / t1:.2f} | {t4 * 1e3:.3f} | {tb / t4:.2f} | "
                f"{1 / max(1 - sparsity, 1e-9):.1f} |")
            print(lines[-1], flush=True)
    lines.append("")


def threads_table(rng, lines: list[str]) -> None:
    lines += [
        "## Two threads (both sides), unstructured weights",
        "",
        "| layer | weight sparsity | builtin ms, 1 thread | builtin ms, 2 threads | "
        "ours ms, 1 thread | ours ms, 2 threads | our speed-up 1->2 | ratio, 2 threads |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    print("\n".join(lines[-4:]), flush=True)
    for name, hw, cin, cout, k, stride in SHAPES[:6]:
        g, x, b = _layer(rng, hw, cin, cout, k, stride)
        for sparsity in (0.8, 0.9):
            builtin, ours = _conv_models(x, _weights(rng, cout, k, cin, sparsity, 1), b, g, 1)
            b1, b2, o1, o2 = _times(_invoker(builtin, x, False, 1), _invoker(builtin, x, False, 2),
                                    _invoker(ours, x, True, 1), _invoker(ours, x, True, 2))
            lines.append(f"| {name} | {sparsity:.0%} | {b1 * 1e3:.3f} | {b2 * 1e3:.3f} | "
                         f"{o1 * 1e3:.3f} | {o2 * 1e3:.3f} | {o1 / o2:.2f} | {b2 / o2:.2f} |")
            print(lines[-1], flush=True)
    lines.append("")


def activation_table(rng, lines: list[str]) -> None:
    lines += [
        "## Input activation sparsity, 1 thread",
        "",
        "Half of the inputs exactly zero (as after ReLU or our activation pruning).",
        "",
        "| layer | weight sparsity | builtin ms | ours ms, dense inputs | ours ms, 50 % zero inputs "
        "| gain from zero inputs | ratio vs builtin, 50 % zero inputs |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    print("\n".join(lines[-6:]), flush=True)
    for name, hw, cin, cout, k, stride in (SHAPES[1], SHAPES[4]):
        g, x, b = _layer(rng, hw, cin, cout, k, stride)
        xz = np.where(rng.random(x.shape) < 0.5, 0.0, x).astype(np.float32)
        for sparsity in (0.0, 0.8):
            builtin, ours = _conv_models(x, _weights(rng, cout, k, cin, sparsity, 1), b, g, 1)
            tb, td, tz = _times(_invoker(builtin, xz, False, 1), _invoker(ours, x, True, 1),
                                _invoker(ours, xz, True, 1))
            lines.append(f"| {name} | {sparsity:.0%} | {tb * 1e3:.3f} | {td * 1e3:.3f} | "
                         f"{tz * 1e3:.3f} | {td / tz:.2f} | {tb / tz:.2f} |")
            print(lines[-1], flush=True)
    lines.append("")


# Pruned variants of the demo model: //python:prune flags -> PruneConfig fields.
# The default objective is latency on this host; the others are the per-layer budgets
# (MACs and errors, not time) kept for comparison.
MODEL_VARIANTS = [
    ("defaults (latency objective)", {}),
    ("--objective=budgets", dict(objective="budgets")),
    ("--objective=budgets --dense_below=0.7", dict(objective="budgets", dense_below=0.7)),
    ("--objective=budgets --target_macs=0.1", dict(objective="budgets", target_macs=0.1)),
    ("--objective=budgets --target_macs=0.1 --block_size=4 --dense_below=0.5",
     dict(objective="budgets", target_macs=0.1, block_size=4, dense_below=0.5)),
]


def _int8_layer(rng, hw: int, cin: int, cout: int, k: int, stride: int, sparsity: float,
                block: int):
    """Random int8 layer quantized as the converter does, its filter sparse in groups of 4
    input channels (what our int8 op's dot products take) of blocks of `block` output
    channels, and a random int8 input."""
    g = op_format.ConvGeometry(k, k, cin, cout, stride, stride, 1, 1, "SAME", "RELU")
    w = rng.integers(-127, 128, (cout, k, k, cin)).astype(np.int8)
    keep = rng.random((-(-cout // block), k, k, -(-cin // 4))) >= sparsity
    keep = np.repeat(np.repeat(keep, block, axis=0)[:cout], 4, axis=-1)[..., :cin]
    w *= keep.astype(np.int8)
    quant = {"input": (0.02, -5), "output": (0.05, -128),
             "filter_scales": np.full(cout, 1e-3, np.float32)}
    bias = rng.integers(-5000, 5000, cout).astype(np.int32)
    x = rng.integers(-128, 128, (1, hw, hw, cin)).astype(np.int8)
    return (tflite_model.single_conv_model(x.shape, w, bias, g, "builtin", int8=quant),
            tflite_model.single_conv_model(x.shape, w, bias, g, "hybrid", block, int8=quant),
            x)


def _int8_variants() -> list[str]:
    """The delegate's variants this CPU runs with int8 microkernels (--kernel: that one)."""
    if FLAGS.kernel:
        return [FLAGS.kernel]
    flags_here = targets.cpuinfo()
    return [k for k, flag in (("avx2", " avx2"), ("avx512", " avx512f")) if flag in flags_here]


def int8_table(rng, lines: list[str]) -> None:
    variants = _int8_variants()
    isa = targets.host_isa()
    model = targets.ModelledProfile(isa, ghz=targets.host_ghz(), dtype="int8") if isa else None
    vnni = " avx512_vnni" in targets.cpuinfo()
    lines += [
        "## int8: our int8 op against the builtin int8 CONV_2D (XNNPACK), 1 thread",
        "",
        "Both on the same int8 weights (per-channel scales), sparse in groups of 4 input "
        "channels (the unit of our int8 format) of one output channel (block 1) or of "
        "blocks of 4 output channels sharing a pattern (block 4: what the variants' block "
        "kernels run, each input load feeding 4 channels); builtin = the stock interpreter's int8 "
        "CONV_2D, which XNNPACK runs. Ours: each delegate variant this CPU runs with its int8 "
        "microkernels (avx2: vpmaddwd; avx512: " + ("VNNI vpdpbusd" if vnni else
                                                     "no VNNI here, so AVX2's") + "), "
        "measured beside one builtin run (XNNPACK uses this CPU's best int8 kernels "
        "throughout, so the avx2 column is not what an AVX2-only CPU would see). Modelled: "
        "the analytic int8 model of "
        f"{isa or 'this ISA'} (targets.ModelledProfile, at the measured clock), its ratio for "
        "the same layer: how far the model that prices other devices is from a measurement.",
        "",
        "| layer | block | sparsity (blocks) | builtin int8 ms | "
        + " | ".join(f"{v} ms | {v} ratio" for v in variants)
        + " | modelled ratio | FLOP-limit ratio |",
        "| --- | ---: | ---: | ---: | " + " | ".join("---: | ---:" for _ in variants)
        + " | ---: | ---: |",
    ]
    for name, hw, cin, cout, k, stride in SHAPES:
        shape = targets.ConvShape(hw, hw, cin, cout, k, k, (stride, stride), (1, 1), "SAME")
        for block in (1, 4):
            for sparsity in (0.3, 0.5, 0.7, 0.9):
                builtin, ours, x = _int8_layer(rng, hw, cin, cout, k, stride, sparsity, block)
                times = _times(timing.invoker(builtin, x, False, 1),
                               *(timing.invoker(ours, x, True, 1, v) for v in variants))
                cells = " | ".join(f"{t * 1e3:.3f} | {times[0] / t:.2f}" for t in times[1:])
                modelled = (f"{model.builtin(shape) / model.ours(shape, sparsity, block):.2f}"
                            if model else "-")
                lines.append(f"| {name} | {block} | {sparsity:.0%} | {times[0] * 1e3:.3f} | "
                             f"{cells} | {modelled} | {1 / (1 - sparsity):.1f} |")
                print(lines[-1], flush=True)
    lines.append("")


def model_table(lines: list[str]) -> None:
    from hybrid_pruning import convert, data, pipeline

    _, _, x_test, y_test = data.digits_split()
    x_test = np.asarray(x_test, np.float32)
    unpruned = convert.to_tflite(io.load_keras_model(str(io.DEMO_MODEL)))
    top1 = float(np.mean(runtime.predict(unpruned, x_test, with_ops=False).argmax(1) == y_test))
    lines += [
        "## Whole demo model (digits CNN, 16x16 inputs): pruned vs unpruned",
        "",
        "Unpruned runs on stock LiteRT (XNNPACK); pruned runs on stock LiteRT plus our delegate. "
        f"Top-1 on the 450-image test split; unpruned: {top1:.2%}.",
        "",
        "| pruned with | top-1 | convs on our op | batch | threads | unpruned ms | pruned ms "
        "| ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    print("\n".join(lines[-2:]), flush=True)
    for label, overrides in MODEL_VARIANTS:
        logging.info("Pruning the demo model: %s", label)
        result = pipeline.compress(io.load_keras_model(str(io.DEMO_MODEL)),
                                   pipeline.PruneConfig(quiet=True, **overrides))
        pruned = result.tflite
        acc = float(np.mean(runtime.predict(pruned, x_test).argmax(1) == y_test))
        convs = [r for r in result.report["layers"] if r["kind"] == "conv2d"]
        on_ours = sum(r["runs_as"] == op_format.OP_NAME for r in convs)
        for batch in (1, 64):
            x = x_test[:batch]
            for threads in (1, 2):
                tu, tp = _times(_invoker(unpruned, x, False, threads),
                                _invoker(pruned, x, True, threads))
                lines.append(f"| {label} | {acc:.2%} | {on_ours}/{len(convs)} | {batch} | "
                             f"{threads} | {tu * 1e3:.3f} | {tp * 1e3:.3f} | {tu / tp:.2f} |")
                print(lines[-1], flush=True)
    lines.append("")


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    lines = [
        "# HybridSparseConv2D vs builtin CONV_2D (XNNPACK)",
        "",
        f"{bench_results.machine()} Our kernel: {FLAGS.kernel or 'fastest available'}.",
        bench_results.command("conv_bench"),
        "",
        "Ratio = builtin time / our time (> 1: ours is faster). FLOP-limit ratio = 1 / (1 - "
        "weight sparsity). Times are the best of alternating rounds.",
        "",
    ]
    if FLAGS.layers:
        weight_sparsity_table(rng, lines)
        threads_table(rng, lines)
        activation_table(rng, lines)
    if FLAGS.int8:
        int8_table(rng, lines)
    if FLAGS.model:
        model_table(lines)
    if FLAGS.output:
        io.write_bytes_atomic(io.user_path(FLAGS.output), ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    app.run(main)
