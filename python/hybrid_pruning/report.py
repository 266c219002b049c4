"""The human-readable summary of a pruning report."""

from __future__ import annotations


def summary(report: dict) -> str:
    header = (f"{'layer':<22}{'kind':<8}{'params':>9}{'sparsity':>10}{'out err':>9}"
              f"{'MACs':>11}{'eff MACs':>11}  runs as")
    lines = [header, "-" * len(header)]
    for r in report["layers"]:
        lines.append(
            f"{r['layer']:<22}{r['kind']:<8}{r['parameters']:>9}{r['weight_sparsity']:>10.1%}"
            f"{r['relative_output_error']:>9.3f}{r['macs']:>11}{r['effective_macs']:>11}  {r['runs_as']}")
    t = report["totals"]
    f = report["fidelity_on_probes"]
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<30}{t['pruned_parameters']:>9}{t['weight_sparsity']:>10.1%}{'':>9}"
        f"{t['macs']:>11}{t['effective_macs']:>11}")
    lines.append(f".tflite size: {t['tflite_bytes_dense']} B dense -> {t['tflite_bytes']} B "
                 f"({t['tflite_bytes'] / t['tflite_bytes_dense']:.1%})")
    fid = ", ".join(f"{k} {v:.4f}" for k, v in f.items())
    lines.append(f"fidelity on probes (pruned .tflite vs original Keras): {fid}")
    for name, reason in report["skipped_layers"].items():
        lines.append(f"not pruned: {name}: {reason}")
    lines.append(f"time: {report['seconds']:.1f} s")
    return "\n".join(lines)
