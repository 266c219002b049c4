"""Issue 8's benchmark: `prune` at default flags for several targets in one run, on the demo
and on the realistic-size model (both trained here and committed), and what each gives.

For the host: top-1 on the digits test split before/after; whole-model latency of the original
(stock LiteRT, XNNPACK) and of the pruned model (our delegate) at batch 1 and 8, 1 and 2
threads, side by side in one process; the host profile's predicted latency (the measured
original with its convs' time replaced by the predicted time of the chosen implementations)
against the measurement. For the modelled targets (arm64-neon, riscv64-rvv, generic): what
the optimiser chose there and why (predicted conv latency per implementation), and the top-1
of that target's model (our op runs the same on every kernel, so it is measured here). And the
analytic model applied to this host's ISA, against the host's measurements of the same layers,
so that the modelled targets' error is known.

    ./bazelw run //tests/bench:codesign_bench -- \
        --output=$PWD/benchmarks/results/codesign.md
"""

from __future__ import annotations

import collections
import os

import numpy as np
from absl import app, flags

import bench_results
from hybrid_pruning import op_format

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "Markdown file to write (default: print only).")
flags.DEFINE_list("models", ["digits_cnn", "digits_resnet"], "Committed models to run.")
flags.DEFINE_list("targets", ["host", "arm64-neon", "riscv64-rvv:vlen=256", "generic"],
                  "Targets, pruned for in one run.")
flags.DEFINE_list("guard_kls", ["0.3"], "Further --guard_kl values to run on the host only "
                  "(the speed/accuracy trade-off a user can make).")


def _top1(scores: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.asarray(scores).argmax(-1) == y))


def _latencies(original: bytes, pruned: bytes, shape) -> dict:
    from hybrid_pruning import timing

    out = {}
    for batch in (1, 8):
        x = np.random.default_rng(0).uniform(0, 1, (batch, *shape)).astype(np.float32)
        for threads in (1, 2):
            base, ours = timing.best_times(
                timing.invoker(original, x, ours=False, threads=threads),
                timing.invoker(pruned, x, ours=True, threads=threads), rounds=5,
                min_seconds=0.1)
            out[(batch, threads)] = (base, ours)
    return out


def _choices(report: dict) -> str:
    """What the optimiser put on our op, and at which block size and sparsity."""
    counts = collections.Counter()
    sparsities = []
    for r in report["layers"]:
        if r["kind"] == "dense":
            continue
        if r["runs_as"] == op_format.OP_NAME:
            counts[f"ours b{r['block_size']}"] += 1
            sparsities.append(r["weight_sparsity"])
        else:
            counts["builtin"] += 1
    text = ", ".join(f"{n}x {k}" for k, n in sorted(counts.items()))
    if sparsities:
        text += f"; weight sparsity on ours {min(sparsities):.0%}-{max(sparsities):.0%}"
    acts = [r["activation_sparsity"] for r in report["layers"] if r["activation_thresholds"]]
    if acts:
        text += f"; activation thresholds on {len(acts)} (mean {np.mean(acts):.0%} zeros)"
    return text


def _analytic_error(result) -> tuple[list[float], list[float]]:
    """Modelled/measured latency ratios of this host's ISA over the pruned model's convs: the
    builtin, and our op at the chosen level."""
    from hybrid_pruning import graph, targets

    isa = targets.host_isa()
    if not isa:
        return [], []
    modelled = targets.ModelledProfile(isa, ghz=targets.host_ghz())
    measured = targets.HostProfile()
    layers, _ = graph.prunable_layers(result.model)
    rows = {r["layer"]: r for r in result.report["layers"]}
    builtin, ours = [], []
    for pl in layers:
        if pl.kind != "conv2d":
            continue
        shape = targets.conv_shape(pl)
        builtin.append(modelled.builtin(shape) / measured.builtin(shape))
        r = rows[pl.name]
        if r["runs_as"] == op_format.OP_NAME:
            ours.append(modelled.ours(shape, r["weight_sparsity"], r["block_size"])
                        / measured.ours(shape, r["weight_sparsity"], r["block_size"]))
    return builtin, ours


def main(argv):
    del argv
    from hybrid_pruning import convert, data, fidelity, graph, io, pipeline, runtime

    demo_dir = os.path.dirname(str(io.DEMO_MODEL))
    sections, summary_rows, target_rows, error_rows = [], [], [], []
    for name in FLAGS.models:
        model = io.load_keras_model(os.path.join(demo_dir, name + ".keras"))
        size = int(model.inputs[0].shape[1])
        _, _, x_test, y_test = data.digits_split(size)
        before = _top1(model.predict(x_test, verbose=0), y_test)
        config = pipeline.PruneConfig(quiet=True, targets=tuple(FLAGS.targets))
        runs = [(target, result, None) for target, result in
                pipeline.compress_targets(model, config).items()]
        for kl in FLAGS.guard_kls:
            guard = fidelity.Guard(max_kl=float(kl))
            runs.append(("host", pipeline.compress(model, pipeline.PruneConfig(
                quiet=True, guard=guard)), float(kl)))
        original = convert.to_tflite(graph.normalize(model))
        for target, result, kl in runs:
            rep = result.report
            t = rep["totals"]
            after = _top1(runtime.predict_all(result.tflite, x_test)[0], y_test)
            conv_before = t.get("predicted_conv_seconds_original", 0.0)
            conv_after = t.get("predicted_conv_seconds_after", 0.0)
            label = name if kl is None else f"{name}, --guard_kl={kl:g}"
            target_rows.append(
                f"| {label} | {target} | {rep['target']['latency']} | "
                f"{conv_before * 1e3:.3f} -> {conv_after * 1e3:.3f} ms "
                f"({conv_before / max(conv_after, 1e-12):.2f}x) | {_choices(rep)} | "
                f"{t['macs_before'] / 1e6:.1f} -> {t['vector_kernel_macs'] / 1e6:.1f} | "
                f"{rep['fidelity_on_probes'].get('top1_agreement', 0):.3f} / "
                f"{rep['fidelity_on_probes'].get('kl_divergence', 0):.3f} | "
                f"{before:.2%} -> {after:.2%} | {t['tflite_bytes_dense'] / 1e3:.0f} -> "
                f"{t['tflite_bytes'] / 1e3:.0f} kB |")
            print(target_rows[-1], flush=True)
            if rep["target"]["latency"] == "modelled":
                continue
            shape = tuple(int(d) for d in model.inputs[0].shape[1:])
            lat = _latencies(original, result.tflite, shape)
            base1, ours1 = lat[(1, 1)]
            predicted = base1 - conv_before + conv_after
            cells = " | ".join(f"{b * 1e3:.3f} -> {o * 1e3:.3f} ms ({b / o:.2f}x)"
                               for b, o in (lat[k] for k in ((1, 1), (1, 2), (8, 1), (8, 2))))
            summary_rows.append(
                f"| {label} | {t['macs_before'] / 1e6:.1f} | {before:.2%} -> {after:.2%} "
                f"({(after - before) * 100:+.2f} pt) | {cells} | {predicted * 1e3:.3f} ms "
                f"({predicted / ours1 - 1:+.0%}) | {rep['seconds']:.0f} s |")
            print(summary_rows[-1], flush=True)
            b_err, o_err = _analytic_error(result)
            if b_err and kl is None:
                error_rows.append(
                    f"| {name} | {len(b_err)} | {np.median(b_err):.2f} "
                    f"({min(b_err):.2f}-{max(b_err):.2f}) | "
                    + (f"{len(o_err)} | {np.median(o_err):.2f} ({min(o_err):.2f}-"
                       f"{max(o_err):.2f})" if o_err else "0 | -") + " |")
    from hybrid_pruning import targets

    lines = [
        "# Co-design: one network, several targets, at default flags",
        "",
        f"{bench_results.machine()} Clock {targets.host_ghz() or 0:.2f} GHz measured "
        f"(/proc/cpuinfo reports {targets.reported_ghz() or 0:.2f} GHz).",
        bench_results.command("codesign_bench"),
        "",
        f"Each model is pruned once for {', '.join(FLAGS.targets)} (probes, channel removal, "
        "statistics and re-fits shared; levels chosen per target) at default flags. "
        "digits_cnn: the 16x16 demo; digits_resnet: the ResNet-style model on 64x64 digits "
        "(`python/train_demo.py --architecture=digits_resnet`). Top-1 on the digits test "
        "split (450 images). Rows with a --guard_kl are a second run at that fidelity "
        f"guard (default {fidelity.DEFAULT_KL:g}; top-1 agreement on the probes at least "
        f"{fidelity.DEFAULT_AGREEMENT['bn']:g} in every run: both models have BatchNorm, so "
        "'bn' probes), host only: the trade-off a user can "
        "choose (benchmarks/results/fidelity_proxy.md: how the guard predicts real "
        "accuracy). The host profile "
        "is measured at 1 thread and at all cores (`--num_threads=1,all`, the default): a "
        "conv runs our op only where it beats the builtin at both, and the written model "
        "is timed at both, layers going back to the builtin while it is slower at either.",
        "",
        "## On this machine (host profile, measured)",
        "",
        "Latency: original on stock LiteRT (XNNPACK) -> pruned with our delegate, best of "
        "alternating rounds in one process. Predicted: the measured original (batch 1, one "
        "thread) with its convs' time replaced by the host profile's prediction for the "
        "chosen implementations; error against the measured pruned model.",
        "",
        "| model | M MACs | top-1 before -> after | batch 1, 1 thread | batch 1, 2 threads "
        "| batch 8, 1 thread | batch 8, 2 threads | predicted (error) | prune time (all "
        "targets) |",
        "| --- | ---: | --- | --- | --- | --- | --- | --- | ---: |",
        *summary_rows,
        "",
        "## Per target",
        "",
        "Conv latency: the original's convs on the builtin kernel -> the chosen "
        "implementations, as the target's profile predicts (batch 1, one thread); "
        "'modelled' targets are priced by targets.ModelledProfile (our kernels' instruction "
        "counts and a documented core: " + "; ".join(
            f"{k}: {c.name} at {c.ghz:g} GHz" for k, c in targets.CORES.items()
            if k not in ("x86_64-avx2", "x86_64-avx512")) + "). Top-1 of each target's "
        "model is measured here (the op computes the same on every kernel).",
        "",
        "| model | target | latency model | conv latency | chosen | M MACs (vector "
        "kernels) | probe agreement / KL | top-1 | .tflite |",
        "| --- | --- | --- | --- | --- | --- | ---: | --- | --- |",
        *target_rows,
        "",
        "## The analytic model on this machine",
        "",
        "targets.ModelledProfile for this host's ISA (at the measured clock), against the "
        "host profile's measurements of the same layers of the pruned model: modelled / "
        "measured, median (range).",
        "",
        "| model | convs | builtin | on our op | ours at the chosen level |",
        "| --- | ---: | --- | ---: | --- |",
        *error_rows,
    ]
    bench_results.emit(lines, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
