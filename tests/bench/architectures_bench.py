"""Prunes, at default flags, every test architecture (saved to disk and reloaded first) and the
two committed digits models, and records what happened to each: layers on our op and left
builtin (and why), whole-network MACs before/after, fidelity on the probes, real top-1 where
the model is trained, and latency of the pruned .tflite against the original (stock LiteRT
with XNNPACK, same process, batch 1, one thread). --vgg adds the VGG-16-style scale case
(its time and peak memory, measured in a child process of its own).

    ./bazelw run //tests/bench:architectures_bench -- \
        --output=$PWD/benchmarks/results/architectures.md [--vgg]
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import tempfile
import time

import numpy as np
from absl import app, flags

import bench_results
from hybrid_pruning import op_format

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "Markdown file to write (default: print only).")
flags.DEFINE_bool("vgg", False, "Also the VGG-16-style model at 224x224 (minutes).")
flags.DEFINE_list("only", None, "Only these architectures.")


def _prune(path: str, input_range, input_shape):
    from hybrid_pruning import io, pipeline

    model = io.load_keras_model(path)
    config = pipeline.PruneConfig(quiet=True, input_range=input_range, input_shape=input_shape)
    return model, pipeline.compress(model, config)


def _latency(model, result, input_shape, threads: int) -> tuple[float, float]:
    from hybrid_pruning import convert, graph, timing

    original = convert.to_tflite(graph.normalize(model, input_shape))
    shape = tuple(int(d) for d in graph.normalize(model, input_shape).inputs[0].shape[1:])
    x = np.random.default_rng(0).uniform(0, 1, (1, *shape)).astype(np.float32)
    base, ours = timing.best_times(
        timing.invoker(original, x, ours=False, threads=threads),
        timing.invoker(result.tflite, x, ours=True, threads=threads))
    return base, ours


def _why(runs_as: str) -> str:
    return runs_as[runs_as.find("(") + 1:runs_as.rfind(")")] if "(" in runs_as else runs_as


def _row(name: str, model, result, input_shape, accuracy=None) -> dict:
    rep = result.report
    t = rep["totals"]
    ours = [r for r in rep["layers"] if r["runs_as"] == op_format.OP_NAME]
    builtin = collections.Counter(
        _why(r["runs_as"]) for r in rep["layers"] if r["runs_as"] != op_format.OP_NAME)
    builtin.update(f"{b['kind']}" for b in rep["builtin_layers"])
    fid = rep["fidelity_on_probes"]
    fidelity = (f"agreement {fid['top1_agreement']:.3f}" if "top1_agreement" in fid else "")
    if fid.get("relative_error") and ("top1_agreement" not in fid or "outputs" in fid):
        fidelity += (", " if fidelity else "") + f"rel. error {fid['relative_error']:.3f}"
    removed = sum(r["channels_before"] - r["channels_after"] for r in rep["layers"])
    base, pruned = _latency(model, result, input_shape, 1)
    base2, pruned2 = _latency(model, result, input_shape, 2)
    # Predicted whole-model latency: the measured original with its convs' predicted time
    # replaced by the chosen implementations', and the rest (depthwise, dense, element-wise
    # ops) scaled by the builtin layers' MACs after / before: channel removal shrinks the
    # depthwise layers between removed channels too.
    before, after = (t.get("predicted_conv_seconds_original"),
                     t.get("predicted_conv_seconds_after"))
    other_before = sum(b["macs_before"] for b in rep["builtin_layers"])
    other_after = sum(b["macs_after"] for b in rep["builtin_layers"])
    shrink = other_after / other_before if other_before else 1.0
    predicted = after + (base - before) * shrink if before is not None else None
    return {
        "model": name, "ours": len(ours), "builtin": dict(builtin),
        "macs": f"{t['macs_before'] / 1e6:.2f} -> {t['effective_macs'] / 1e6:.2f} "
                f"({t['vector_kernel_macs'] / 1e6:.2f})",
        "channels_removed": removed, "refused": len(rep["channel_removal_refused"]),
        "probes": rep["probes"]["kind"], "fidelity": fidelity,
        "scale": rep["fidelity_guard"]["budget_scale"],
        "accuracy": accuracy, "latency": f"{base * 1e3:.3f} -> {pruned * 1e3:.3f} ms",
        "speed": base / pruned, "speed2": base2 / pruned2, "seconds": rep["seconds"],
        "predicted": "-" if predicted is None else
        f"{predicted * 1e3:.3f} ms ({predicted / pruned - 1:+.0%})",
    }


def _vgg_child(path: str, queue) -> None:
    import resource

    from hybrid_pruning import io, pipeline

    start = time.time()
    result = pipeline.compress(io.load_keras_model(path), pipeline.PruneConfig(
        quiet=True, objective="budgets", measure_latency=False))
    queue.put({"seconds": time.time() - start,
               "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
               "totals": result.report["totals"],
               "fidelity": result.report["fidelity_on_probes"],
               "guard": result.report["fidelity_guard"]["met"]})


def main(argv):
    del argv
    import test_models
    from hybrid_pruning import data, io, runtime

    work = tempfile.mkdtemp()
    rows = []
    _, _, x_test, y_test = data.digits_split()
    demo_dir = os.path.dirname(str(io.DEMO_MODEL))
    for name in ("digits_cnn", "digits_cnn_nobn"):
        if FLAGS.only and name not in FLAGS.only:
            continue
        model, result = _prune(os.path.join(demo_dir, name + ".keras"), (0.0, 1.0), None)
        before = float(np.mean(model.predict(x_test, verbose=0).argmax(1) == y_test))
        after = float(np.mean(runtime.predict_all(result.tflite, x_test)[0].argmax(1) == y_test))
        rows.append(_row(name, model, result, None, f"{before:.4f} -> {after:.4f}"))
        print(rows[-1], flush=True)
    for name, (build, input_range, input_shape) in test_models.ARCHITECTURES.items():
        if FLAGS.only and name not in FLAGS.only:
            continue
        path = os.path.join(work, name + ".keras")
        build().save(path)
        model, result = _prune(path, input_range, input_shape)
        rows.append(_row(name, model, result, input_shape))
        print(rows[-1], flush=True)
    vgg = None
    if FLAGS.vgg:
        path = os.path.join(work, "vgg16_edges.keras")
        test_models.vgg16_edges().save(path)
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        child = ctx.Process(target=_vgg_child, args=(path, queue))
        child.start()
        vgg = queue.get()
        child.join()
        print(vgg, flush=True)
    lines = [
        "# Test architectures pruned at default flags",
        "",
        bench_results.machine(),
        bench_results.command("architectures_bench"),
        "",
        "Each model is saved to disk and reloaded, then pruned with default flags (probes "
        "chosen automatically). MACs: whole network before -> effective after (what the "
        "vector kernels compute, which skip zero weights only). Latency: batch 1, one thread "
        "(speed at two threads in its own column), "
        "the original converted as is on stock LiteRT (XNNPACK) vs the pruned model with our "
        "delegate, best of alternating rounds in one process; speed > 1 means the pruned "
        "model is faster. Predicted: the measured original with its convs' latency replaced "
        "by what the host profile (targets.py) predicts for the chosen implementations, and "
        "its error against the measured pruned latency (it takes the other ops as "
        "unchanged, which channel removal through depthwise layers breaks). 'dense': a conv "
        "the optimiser left unpruned on the builtin kernel, faster there than our op at any "
        "level the guard allowed. Only the two digits models are "
        "trained; the others have random weights, so their fidelity is to the original on "
        "probes, not accuracy.",
        "",
        "| model | on our op | builtin (why) | M MACs before -> after (vector) | channels "
        "removed | groups refused | probes | fidelity on probes | budget scale | top-1 "
        "before -> after | latency | speed | speed, 2 threads | predicted (error) | prune time |",
        "| --- | ---: | --- | --- | ---: | ---: | --- | --- | ---: | --- | --- | ---: | --- "
        "| ---: |",
    ]
    for r in rows:
        builtin = ", ".join(f"{n}x {k}" for k, n in r["builtin"].items()) or "-"
        lines.append(
            f"| {r['model']} | {r['ours']} | {builtin} | {r['macs']} | {r['channels_removed']} "
            f"| {r['refused']} | {r['probes']} | {r['fidelity']} | {r['scale']:g} | "
            f"{r['accuracy'] or '-'} | {r['latency']} | {r['speed']:.2f}x | {r['speed2']:.2f}x | "
            f"{r['predicted']} | "
            f"{r['seconds']:.0f} s |")
    if vgg:
        t = vgg["totals"]
        lines += [
            "",
            "## Scale: VGG-16-style edge detector (random weights, 14.7 M parameters, 224x224, "
            "128 probes, `--objective=budgets`)",
            "",
            f"Time {vgg['seconds']:.0f} s, peak resident memory {vgg['peak_gb']:.2f} GB; "
            f"MACs {t['macs_before'] / 1e9:.2f} G -> {t['effective_macs'] / 1e9:.3f} G "
            f"effective; guard met: {vgg['guard']} (relative output error "
            f"{vgg['fidelity'].get('relative_error', 0):.4f}). Random weights say little "
            "about fidelity; this row is for memory and time.",
        ]
    bench_results.emit(lines, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
