"""A pruning report: built from the pipeline's outcome (JSON), and shown as the console
summary and the plot."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from hybrid_pruning import graph, op_format

if TYPE_CHECKING:  # pipeline imports this module
    from hybrid_pruning.pipeline import Outcome


def _predicted(report: dict) -> dict:
    search = report.get("global_budget_search") or {}
    return search.get("predicted_seconds") or {}


def headline(report: dict) -> str | None:
    """Latency on the target: predicted for the convs, and measured here for the host."""
    t, target = report["totals"], report.get("target", {})
    parts = []
    if "predicted_conv_seconds_after" in t:
        before = t.get("predicted_conv_seconds_original", t["predicted_conv_seconds_before"])
        after = t["predicted_conv_seconds_after"]
        parts.append(f"convs on {target.get('name', 'the target')} ({target.get('latency')}): "
                     f"{before * 1e3:.3f} ms -> {after * 1e3:.3f} ms predicted "
                     f"({before / after:.2f}x)")
    lat = report.get("latency_on_host")
    for row in (lat or {}).get("by_threads", []):
        parts.append(f"whole model here (batch 1, {row['threads']} thread(s)): "
                     f"{row['original_seconds'] * 1e3:.3f} ms -> "
                     f"{row['pruned_seconds'] * 1e3:.3f} ms measured ({row['speedup']:.2f}x)")
    return "latency: " + "; ".join(parts) if parts else None


def comparison(reports: dict[str, dict]) -> str:
    """One line per target of a multi-target run."""
    header = (f"{'target':<26}{'latency model':<26}{'convs before':>13}{'after':>10}"
              f"{'speed':>8}{'our op':>8}{'nonzero':>10}{'bytes':>10}  fidelity")
    lines = [header, "-" * len(header)]
    for name, rep in reports.items():
        t = rep["totals"]
        before = t.get("predicted_conv_seconds_original", 0.0)
        after = t.get("predicted_conv_seconds_after", 0.0)
        ours = sum(r["runs_as"] == op_format.OP_NAME for r in rep["layers"])
        fid = ", ".join(f"{k} {v:.3f}" for k, v in rep["fidelity_on_probes"].items()
                        if isinstance(v, float))
        lines.append(f"{name:<26}{rep['target']['latency']:<26}{before * 1e3:>10.3f} ms"
                     f"{after * 1e3:>7.3f} ms{before / max(after, 1e-12):>7.2f}x"
                     f"{ours:>8}{t['nonzero_parameters']:>10}{t['tflite_bytes']:>10}  {fid}")
    return "\n".join(lines)


def summary(report: dict) -> str:
    predicted = _predicted(report)
    header = (f"{'layer':<16}{'kind':<7}{'channels':>10}{'params':>9}{'w.sparse':>9}"
              f"{'a.sparse':>9}{'MACs':>10}{'eff MACs':>10}"
              + (f"{'builtin':>10}{'chosen':>8}" if predicted else "") + "  runs as")
    lines = [header, "-" * len(header)]
    for r in report["layers"]:
        ch = f"{r['channels_before']}->{r['channels_after']}"
        p = predicted.get(r["layer"])
        times = (f"{p['builtin'] * 1e3:>10.3f}{p['chosen'] * 1e3:>8.3f}" if p
                 else " " * 18) if predicted else ""
        lines.append(
            f"{r['layer']:<16}{r['kind']:<7}{ch:>10}{r['parameters_before']:>9}"
            f"{r['weight_sparsity']:>9.1%}{r['activation_sparsity']:>9.1%}"
            f"{r['macs_before']:>10}{r['effective_macs']:>10}{times}  {r['runs_as']}")
    for b in report.get("builtin_layers", []):
        lines.append(f"{b['layer']:<16}{'':<7}{'':>10}{'':>9}{'':>9}{'':>9}"
                     f"{b['macs_before']:>10}{b['macs_after']:>10}  {b['runs_as']}")
    t = report["totals"]
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<33}{t['parameters_before']:>9}  params -> {t['nonzero_parameters']} nonzero "
        f"({t['parameter_reduction']:.1%} fewer); MACs {t['macs_before']} -> "
        f"{t['effective_macs']} effective ({1 - t['effective_macs'] / t['macs_before']:.1%} fewer)")
    lines.append(
        f"{'':<33}the vector kernels (AVX2/AVX-512/NEON/RVV) skip zero weights only: "
        f"{t['vector_kernel_macs']} MACs ({1 - t['vector_kernel_macs'] / t['macs_before']:.1%} "
        "fewer); the reference kernel also skips zero activations")
    lines.append(f".tflite size: {t['tflite_bytes_dense']} B dense -> {t['tflite_bytes']} B "
                 f"({t['tflite_bytes'] / t['tflite_bytes_dense']:.1%})")
    fid = ", ".join(f"{k} {v:.4f}" for k, v in report["fidelity_on_probes"].items()
                    if isinstance(v, float))
    lines.append(f"fidelity on probes (reduced .tflite vs original Keras): {fid}")
    if "probes" in report:
        lines.append(f"probes: {report['probes']['count']} '{report['probes']['kind']}' inputs "
                     "(data-free)")
    guard = report.get("fidelity_guard")
    if guard:
        scale = guard["budget_scale"]
        lines.append("fidelity guard: " + ("met" if guard["met"] else "MISSED: " + guard["miss"])
                     + ("" if scale == 1 else f" (per-layer budgets scaled by {scale:g} to "
                        "meet it)"))
    refined = (report.get("global_budget_search") or {}).get("refined_layers")
    if refined:
        lines.append(f"refined: {refined} move(s) to faster levels kept after the search, "
                     "each checked against the guard (--refine_steps)")
    fallback = (report.get("global_budget_search") or {}).get("measured_fallback")
    if fallback:
        lines.append(f"measured fallback: {', '.join(fallback)} back on the builtin kernel (the "
                     "whole model ran slower than the original at some thread count with ours)")
    for name, reason in report["skipped_layers"].items():
        lines.append(f"not pruned: {name}: {reason}")
    for name, reason in report.get("channel_removal_refused", {}).items():
        lines.append(f"channels of {name} kept: {reason}")
    for name, count in report.get("channels_kept_unjudged", {}).items():
        lines.append(f"channels of {name} kept: {count} that the probes leave far flatter than "
                     "its BatchNorm records (the probes miss real inputs there; check the model "
                     "with evaluate --data)")
    lines.append(f"time: {report['seconds']:.1f} s")
    line = headline(report)
    if line:  # last, where the eye lands: what the user came for
        lines.append(line)
    return "\n".join(lines)


def plot(report: dict, path: str) -> None:
    """Per-layer bars: MACs before/after, and weight/activation sparsity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = report["layers"]
    names = [r["layer"] for r in rows]
    x = np.arange(len(rows))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 0.9 * len(rows) + 2), 7), sharex=True)
    t = report["totals"]
    predicted = (report.get("global_budget_search") or {}).get("predicted_seconds")
    lat = report.get("latency_on_host")
    if predicted:  # the latency objective: what each layer costs here, before and after
        top.bar(x - 0.2, [predicted.get(n, {}).get("builtin", 0) * 1e6 for n in names], 0.4,
                label="builtin CONV_2D (dense)")
        top.bar(x + 0.2, [predicted.get(n, {}).get("chosen", 0) * 1e6 for n in names], 0.4,
                label="chosen (predicted)")
        top.set_ylabel("microseconds, batch 1")
        target = report.get("target", {})
        title = (f"conv latency on {target.get('name', 'the target')} "
                 f"({target.get('latency', 'predicted')})")
    else:
        top.bar(x - 0.2, [r["macs_before"] / 1e6 for r in rows], 0.4, label="MACs before")
        top.bar(x + 0.2, [r["effective_macs"] / 1e6 for r in rows], 0.4,
                label="effective MACs after")
        top.set_ylabel("million MACs")
        title = f"{t['macs_before'] / 1e6:.2f} M -> {t['effective_macs'] / 1e6:.2f} M MACs"
    if lat:
        title = (f"measured {lat['original_seconds'] * 1e3:.3f} -> "
                 f"{lat['pruned_seconds'] * 1e3:.3f} ms ({lat['speedup']:.2f}x); " + title)
    top.set_title(f"{title}; {t['tflite_bytes_dense'] / 1e3:.0f} -> "
                  f"{t['tflite_bytes'] / 1e3:.0f} kB")
    top.legend()
    bottom.bar(x - 0.3, [r["weight_sparsity"] for r in rows], 0.3, label="weight sparsity")
    bottom.bar(x, [r["activation_sparsity"] for r in rows], 0.3, label="activation sparsity")
    bottom.bar(x + 0.3, [1 - r["channels_after"] / r["channels_before"] for r in rows], 0.3,
               label="channels removed")
    bottom.set_ylim(0, 1)
    bottom.set_ylabel("fraction")
    bottom.set_xticks(x, names, rotation=30, ha="right")
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _predicted_totals(search: dict | None) -> dict:
    """Predicted conv seconds on the target, before and after (latency objective only)."""
    seconds = (search or {}).get("predicted_seconds")
    if not seconds:
        return {}
    return {"predicted_conv_seconds_before": sum(v["builtin"] for v in seconds.values()),
            "predicted_conv_seconds_after": sum(v["chosen"] for v in seconds.values())}


def build(config, outcome: Outcome, before: dict, macs_before: dict, skipped: dict,
          dense_size: int) -> dict:
    """The JSON report of one target's outcome (pipeline._finish): per layer what was removed
    and where it runs, the layers left to builtin ops, totals, fidelity and the search."""
    layers, tflite, model = outcome.layers, outcome.tflite, outcome.model
    runs_as = {r.layer: r.runs_as for r in outcome.records if r.layer}
    rows = []
    for pl, w, a in zip(layers, outcome.weights, outcome.activations):
        ch_before, params_before, pl_macs_before = before[pl.name]
        ours = runs_as.get(pl.name) == op_format.OP_NAME
        act_sparsity = a.activation_sparsity if ours else 0.0
        # A conv left to the builtin kernel computes its zeros too (Dense keeps the budget's
        # convention: its zeros count as removed).
        weight_sparsity = w.sparsity if ours or pl.kind == "dense" else 0.0
        macs_after = pl.macs
        rows.append({
            "layer": pl.name, "kind": "separable" if pl.separable else pl.kind,
            "batch_norm_folded": pl.batch_norm is not None,
            "channels_before": int(ch_before), "channels_after": int(pl.kernel.shape[-1]),
            "channels_removed": outcome.removed.get(pl.name, {}),
            "parameters_before": params_before,
            "nonzero_parameters": int(np.count_nonzero(pl.kernel)),
            "weight_sparsity": w.sparsity, "weight_error": w.relative_error,
            "block_size": w.block_size,
            "activation_sparsity": act_sparsity,
            "natural_activation_sparsity": a.natural_sparsity,
            "activation_thresholds": a.thresholds is not None and ours,
            "activation_error": a.relative_error if ours else 0.0,
            "macs_before": pl_macs_before, "macs_after_dense": macs_after,
            "effective_macs": int(round(macs_after * (1 - weight_sparsity) * (1 - act_sparsity))),
            # What the vector kernels compute: they skip zero weights, not zero activations.
            "vector_kernel_macs": int(round(macs_after * (1 - weight_sparsity))),
            "runs_as": runs_as.get(pl.name, "FULLY_CONNECTED" if pl.kind == "dense"
                                   else "CONV_2D (not matched)"),
        })
    # Every other layer with multiply-adds (depthwise convs, the depthwise half of separable
    # convs, grouped and transposed convs, ...) runs as a builtin op; its MACs count too.
    pruned_macs = {pl.name: before[pl.name][2] for pl in layers}
    builtin = []
    for name, m in macs_before.items():
        rest = m - pruned_macs.get(name, 0)
        if rest <= 0:
            continue
        layer = model.get_layer(name)
        after = graph.layer_macs(layer) - (next(pl.macs for pl in layers if pl.name == name)
                                           if name in pruned_macs else 0)
        builtin.append({"layer": name + ("/depthwise" if name in pruned_macs else ""),
                        "kind": graph.class_name(layer) + (" (depthwise half)"
                                                           if name in pruned_macs else ""),
                        "macs_before": rest,
                        "macs_after": int(after),
                        "runs_as": "builtin (" + skipped.get(name, "depthwise half") + ")"})
    params_before = sum(r["parameters_before"] for r in rows)
    nonzero = sum(r["nonzero_parameters"] for r in rows)
    other_before = sum(b["macs_before"] for b in builtin)
    other_after = sum(b["macs_after"] for b in builtin)
    return {
        "config": {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in dataclasses.asdict(config).items() if k != "profile"},
        "layers": rows,
        "builtin_layers": builtin,
        "skipped_layers": skipped,
        "channel_removal_refused": outcome.refused,
        "channels_kept_unjudged": outcome.unjudged,
        "totals": {
            "parameters_before": params_before,
            "nonzero_parameters": nonzero,
            "parameter_reduction": 1 - nonzero / params_before,
            "macs_before": sum(r["macs_before"] for r in rows) + other_before,
            "effective_macs": sum(r["effective_macs"] for r in rows) + other_after,
            "vector_kernel_macs": sum(r["vector_kernel_macs"] for r in rows) + other_after,
            "builtin_macs_before": other_before,
            "tflite_bytes_dense": dense_size,
            **_predicted_totals(outcome.search),
            "tflite_bytes": len(tflite),
        },
        "fidelity_on_probes": outcome.fidelity,
        "global_budget_search": outcome.search,
    }
