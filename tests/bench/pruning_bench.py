"""Benchmark of the data-free reductions on the demo model, against plain global magnitude
pruning at equal effective MACs. Evaluation uses the digits test split (the reductions never
see it). Writes a markdown table.

    ./bazelw run //tests/bench:pruning_bench -- --output=$PWD/benchmarks/results/pruning_demo.md
"""

from __future__ import annotations

import dataclasses
import datetime
import platform
import sys

import numpy as np
from absl import app, flags, logging

import bench_results

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "Markdown file to write (default: print only).")

_OFF = dict(weight_error_budget=0.0, activation_error_budget=0.0, constant_error_budget=0.0,
            merge_error_budget=0.0)


def _accuracy(tflite: bytes, x, y) -> float:
    from hybrid_pruning import runtime

    return float(np.mean(runtime.predict(tflite, x).argmax(1) == y))


def _row(name: str, tflite: bytes, report: dict | None, x, y, **extra) -> dict:
    totals = report["totals"] if report else {}
    return {"variant": name, "top1": _accuracy(tflite, x, y),
            "macs": totals.get("effective_macs"), "params": totals.get("nonzero_parameters"),
            "bytes": len(tflite), **extra}


def global_magnitude(fraction: float, x_probe):
    """Plain global magnitude pruning: one threshold over all Conv2D/Dense weights (folded),
    no re-fit, no other technique; rewritten to our op like ours."""
    from hybrid_pruning import convert, graph, io, tflite_rewrite

    model = io.load_keras_model(str(io.DEMO_MODEL))
    layers, _ = graph.prunable_layers(model)
    all_w = np.concatenate([np.abs(pl.folded_kernel).ravel() for pl in layers])
    t = np.quantile(all_w, fraction) if fraction > 0 else -1.0
    natural = [float(np.mean(a == 0)) for a in graph.layer_inputs(model, layers, x_probe)]
    macs = 0.0
    for pl, z in zip(layers, natural):
        keep = np.abs(pl.folded_kernel) > t
        pl.set_kernel(pl.kernel * keep)
        macs += pl.macs * keep.mean() * (1 - (z if pl.kind == "conv2d" else 0.0))
    flat = convert.to_tflite(model)
    names = tflite_rewrite.match_layers(flat, {pl.name: pl.folded_kernel for pl in layers
                                               if pl.kind == "conv2d"})
    tflite, _ = tflite_rewrite.rewrite(flat, layer_names=names)
    params = sum(int(np.count_nonzero(pl.kernel)) for pl in layers)
    return tflite, macs, params


def main(argv):
    del argv
    from hybrid_pruning import convert, data, io, pipeline, probes as probes_lib

    _, _, x, y = data.digits_split()
    base = pipeline.PruneConfig(quiet=True, objective="budgets")
    variants = {
        "weight pruning alone": dict(_OFF, weight_error_budget=base.weight_error_budget),
        "activation pruning alone": dict(_OFF, activation_error_budget=base.activation_error_budget),
        "near-constant channels alone": dict(_OFF, constant_error_budget=0.1),
        "near-identical channels alone": dict(_OFF, merge_error_budget=0.1),
        "all four (defaults)": {},
        "all four, random probes": dict(probe="random"),
        "global budget --target_macs=0.25": dict(target_macs=0.25),
        "global budget --target_macs=0.10": dict(target_macs=0.10),
    }
    original = io.load_keras_model(str(io.DEMO_MODEL))
    dense = convert.to_tflite(original)
    rows = [_row("original", dense, None, x, y, macs=None, params=None)]
    macs0 = None
    reports = {}
    for name, overrides in variants.items():
        logging.info("running %s", name)
        result = pipeline.compress(io.load_keras_model(str(io.DEMO_MODEL)),
                                   dataclasses.replace(base, **overrides))
        reports[name] = result.report
        macs0 = result.report["totals"]["macs_before"]
        rows.append(_row(name, result.tflite, result.report, x, y))
    rows[0]["macs"] = macs0
    rows[0]["params"] = reports["all four (defaults)"]["totals"]["parameters_before"]
    # Baselines: bisection on the global magnitude percentile to equal MACs (it has no
    # activation pruning, so it must remove more weights) and to equal nonzero parameters.
    probes = probes_lib.make_probes(original, "bn", 128, (0.0, 1.0), 0)
    targets = [("MACs", name, reports[name]["totals"]["effective_macs"], 1)
               for name in ("all four (defaults)", "global budget --target_macs=0.10")]
    targets.append(("nonzero params", "all four (defaults)",
                    reports["all four (defaults)"]["totals"]["nonzero_parameters"], 2))
    for what, name, target, index in targets:
        lo, hi = 0.0, 0.999
        for _ in range(14):
            mid = 0.5 * (lo + hi)
            value = global_magnitude(mid, probes)[index]
            lo, hi = (mid, hi) if value > target else (lo, mid)
        tflite, macs, params = global_magnitude(hi, probes)
        rows.append({"variant": f"baseline: global magnitude, {hi:.1%} sparsity ({what} of "
                                f"'{name}')", "top1": _accuracy(tflite, x, y), "macs": int(macs),
                     "params": params, "bytes": len(tflite)})

    lines = [
        "# Data-free reductions on the demo model",
        "",
        f"Date: {datetime.date.today()}. Machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"Python {platform.python_version()}.",
        bench_results.command("pruning_bench"),
        "",
        "Top-1 on the 450-image digits test split, of the .tflite running HybridSparseConv2D. "
        "MACs are effective: zero weights and zero or below-threshold input activations that "
        "our kernel skips are not counted (the baseline is counted the same way). "
        "No variant saw any data or was fine-tuned.",
        "",
        "| variant | top-1 | effective MACs | nonzero params | .tflite bytes |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['top1']:.2%} | {r['macs']:,} | {r['params']:,} | "
                     f"{r['bytes']:,} |")
    ours = reports["all four (defaults)"]
    lines += ["", "Per layer, all four (defaults):", "",
              "| layer | channels | weight sparsity | activation sparsity | MACs before | effective MACs |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in ours["layers"]:
        lines.append(f"| {r['layer']} | {r['channels_before']} -> {r['channels_after']} | "
                     f"{r['weight_sparsity']:.1%} | {r['activation_sparsity']:.1%} | "
                     f"{r['macs_before']:,} | {r['effective_macs']:,} |")
    bench_results.emit(lines, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
