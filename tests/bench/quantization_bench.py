"""Issue 19's baseline: what a user who wants a faster, smaller model without data picks
today (the stock converter's quantization) against ours, on the committed digits models.

Rows per model: stock float32 (converted as is); stock dynamic-range (int8 weights, float
activations; the converter's data-free Optimize.DEFAULT); stock full-integer int8 calibrated on
our data-free probes (the same 128 probes `prune` makes, as representative data; float input
and output); ours (`prune` at default flags, float32, our delegate). Size of the .tflite; top-1
on the digits test split (which neither the quantizer nor `prune` sees); latency at batch 1,
1 and 2 threads, every row timed side by side in one process (best of alternating rounds;
stock rows on the stock interpreter with XNNPACK, ours with our delegate).

    ./bazelw run //tests/bench:quantization_bench -- \\
        --output=$PWD/benchmarks/results/quantization.md
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
from absl import app, flags

import bench_results

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "Markdown file to write (default: print only).")
flags.DEFINE_list("models", ["digits_cnn", "digits_resnet"], "Committed models to run.")
flags.DEFINE_integer("rounds", 7, "Alternating timing rounds.", lower_bound=1)


def _top1(scores: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.asarray(scores).argmax(-1) == y))


def _rows(name: str) -> list[str]:
    from hybrid_pruning import convert, data, graph, io, pipeline, probes, runtime, timing

    demo_dir = os.path.dirname(str(io.DEMO_MODEL))
    model = graph.normalize(io.load_keras_model(os.path.join(demo_dir, name + ".keras")))
    size = int(model.inputs[0].shape[1])
    _, _, x_test, y_test = data.digits_split(size)
    keras_top1 = _top1(model.predict(x_test, verbose=0), y_test)
    config = pipeline.PruneConfig(quiet=True)
    calibration = probes.make_probes(model, config.probe, config.probe_count,
                                     config.input_range, config.seed)
    candidates = []  # (label, flatbuffer, runs with our delegate, seconds to make)
    for quantization in convert.QUANTIZATIONS:
        start = time.perf_counter()
        flat = convert.to_tflite(model, quantization, calibration)
        candidates.append((f"stock {quantization}", flat, False, time.perf_counter() - start))
    for dtype, flags_text, changes in (
            ("float32", "default flags", {}), ("int8", "default flags", {}),
            # Pruned for one thread only: what a single-threaded deployment gets where a
            # node of ours costs a two-thread model more than it saves (README).
            ("int8", "--num_threads=1", {"num_threads": "1"})):
        start = time.perf_counter()
        result = pipeline.compress(model, dataclasses.replace(config, dtype=dtype, **changes))
        candidates.append((f"ours (prune, {flags_text}, --dtype={dtype})", result.tflite, True,
                           time.perf_counter() - start))
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    x = np.random.default_rng(0).uniform(0, 1, (1, *shape)).astype(np.float32)
    times = {}
    for threads in (1, 2):
        invokes = [timing.invoker(flat, x, ours, threads) for _, flat, ours, _ in candidates]
        times[threads] = timing.best_times(*invokes, rounds=FLAGS.rounds, min_seconds=0.1)
    rows = []
    base = {t: times[t][0] for t in times}
    for i, (label, flat, ours, seconds) in enumerate(candidates):
        top1 = _top1(runtime.predict_all(flat, x_test, with_ops=ours)[0], y_test)
        cells = " | ".join(f"{times[t][i] * 1e3:.3f} ms ({base[t] / times[t][i]:.2f}x)"
                           for t in (1, 2))
        rows.append(f"| {name} | {label} | {len(flat) / 1e3:,.0f} kB | {top1:.2%} "
                    f"({(top1 - keras_top1) * 100:+.2f} pt) | {cells} | {seconds:.0f} s |")
        print(rows[-1], flush=True)
    return rows


def main(argv):
    del argv
    rows = []
    for name in FLAGS.models:
        rows += _rows(name)
    lines = [
        "# Baseline: stock quantization against ours",
        "",
        bench_results.machine(),
        bench_results.command("quantization_bench"),
        "",
        "What a user who wants a faster, smaller model without data picks today, on the "
        "committed digits models (digits_cnn: the 16x16 demo; digits_resnet: the ResNet-style "
        "model on 64x64 digits). Stock rows: the stock TFLite converter, run by the stock "
        "LiteRT interpreter (XNNPACK); 'dynamic' is Optimize.DEFAULT alone (int8 weights, "
        "float activations), 'int8' full-integer with our 128 data-free probes as the "
        "representative dataset (float input and output). Ours: `prune` at default flags "
        "(latency objective, host), float32 and `--dtype=int8` (full-integer int8 on the same "
        "probes, our int8 op where measured faster), run with our delegate; the last row "
        "prunes for one thread only (`--num_threads=1`), so its two-thread time is not "
        "what it was made for. Top-1 on the "
        "digits test "
        "split (450 images; delta against the Keras original). Latency: batch 1, best of "
        "alternating rounds in one process; the ratio is the stock float32 model's time over "
        "the row's. Time: to make the file (quantization or `prune`, including its latency "
        "tables when not cached).",
        "",
        "| model | variant | .tflite | top-1 | 1 thread | 2 threads | time |",
        "| --- | --- | ---: | --- | --- | --- | ---: |",
        *rows,
    ]
    bench_results.emit(lines, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
