"""How well the data-free fidelity guard predicts real accuracy: every candidate model the
latency search judges, with its fidelity on the probes (top-1 agreement, KL divergence), its
predicted conv latency on the host, and its top-1 on the digits test split (labelled data the
pruner never sees; used here only to grade the guard).

For each committed model the target-independent work (probes, channel removal, statistics,
candidate levels) is done once; then the host's search runs once per guard, each from the same
weights. The defaults of `--guard_agreement` and `--guard_kl` (fidelity.DEFAULT_*) are chosen
from this file.

    ./bazelw run //tests/bench:fidelity_proxy_bench -- \
        --output=$PWD/benchmarks/results/fidelity_proxy.md
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

import bench_results

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "Markdown file to write (default: print only).")
flags.DEFINE_list("models", ["digits_cnn", "digits_resnet"], "Committed models to run.")
flags.DEFINE_list("guards", ["0.9:none", "0.8:0.1", "0.8:0.15", "0.8:0.2"],
                  "Guards to search with, each 'agreement:kl' ('none': that part off) or "
                  "'default' (the flags' defaults).")
flags.DEFINE_float("budget_scale", 1.0, "Channel-removal budgets x this (prune's back-off "
                   "scale; digits_cnn_nobn needs 0.5 to meet the guard at all).")


def _guard(spec: str):
    from hybrid_pruning import fidelity

    if spec == "default":
        return fidelity.Guard()
    agreement, kl = spec.split(":")
    return fidelity.Guard(min_agreement=None if agreement == "none" else float(agreement),
                          max_kl=None if kl == "none" else float(kl))


def _label(guard) -> str:
    parts = []
    if guard.min_agreement is not None:
        parts.append(f"agreement >= {guard.min_agreement:g}")
    if guard.max_kl is not None:
        parts.append(f"KL <= {guard.max_kl:g}")
    return " and ".join(parts)


def _level_seconds(tables) -> float:
    """Predicted conv seconds of the model as it is now: each layer's level is the candidate
    whose zero pattern its kernel has (re-fits change values, not patterns)."""
    total = 0.0
    for t in tables:
        if t.seconds is None or t.layer.kind != "conv2d":
            continue
        zeros = t.layer.folded_kernel == 0
        level = next((i for i, w in enumerate(t.weights)
                      if np.array_equal(w[0].reshape(zeros.shape) == 0, zeros)), 0)
        total += float(t.seconds[level, 0])
    return total


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b)[0])


def _damage_model(model, tables, probes, reference) -> list[str]:
    """Per conv: the KL on probes with it pruned alone (block 1) against what the search's
    damage model predicts (fitted to up to three such measurements per layer: in-sample at
    those levels) and what the weight-noise sensitivity it replaced predicted
    (sensitivity x error^2)."""
    from hybrid_pruning import budget

    lines = ["Damage model: the KL on the probes with one conv pruned alone (block 1; "
             "measured / predicted by the fitted damage = a * error^p / predicted by the "
             "weight-noise sensitivity x error^2 that it replaced):", "",
             "| layer | p | 50 % | 80 % | 90 % |", "| --- | ---: | --- | --- | --- |"]
    for seed, t in enumerate(tables):
        if t.layer.kind != "conv2d" or len(t.weights) < 2:
            continue
        noise = budget._sensitivity(model, t.layer, t.pruner, probes, reference, seed)
        cells = []
        for sparsity in (0.5, 0.8, 0.9):
            i = next((i for i, w in enumerate(t.weights)
                      if w[3] == 1 and abs(w[2] - sparsity) < 0.02), None)
            if i is None:
                cells.append("")
                continue
            kernel, err = t.weights[i][:2]
            measured = budget.damage_alone(model, t.layer, t.pruner, kernel, err, probes,
                                           reference)
            cells.append(f"{measured:.4f} / {float(t.damage()[i, 0]):.4f} / "
                         f"{noise * err ** 2:.4f}")
        lines.append(f"| {t.layer.name} | {t.exponent:.2f} | " + " | ".join(cells) + " |")
    return lines + [""]


def _run(name: str, lines: list[str]) -> None:
    from hybrid_pruning import (budget, convert, data, fidelity, graph, io, pipeline,
                                probes as probes_lib, runtime, targets)

    model = io.load_keras_model(os.path.join(os.path.dirname(str(io.DEMO_MODEL)),
                                             name + ".keras"))
    config = pipeline.PruneConfig(quiet=True)
    original = graph.normalize(model, None)
    size = int(original.inputs[0].shape[1])
    _, _, x_test, y_test = data.digits_split(size)
    probes = probes_lib.make_probes(original, config.probe, config.probe_count,
                                    config.input_range, config.seed)
    reference = fidelity.as_list(original.predict(probes, verbose=0))
    top1_before = float(np.mean(original.predict(x_test, verbose=0).argmax(1) == y_test))
    threads = targets.thread_counts(config.num_threads)
    profile = targets.profile_for("host", threads)
    work = graph.normalize(model, None)
    prepared = pipeline._prepare(work, probes, reference, config, FLAGS.budget_scale, None,
                                 [profile])
    m, layers, tables = prepared.model, prepared.layers, prepared.tables
    damage_lines = _damage_model(m, tables, probes, reference)
    rows: list[dict] = []
    reconverter = convert.Reconverter(m, layers)

    def evaluate(label):
        def fn(thresholds):
            flat, _ = pipeline._to_ours(m, layers, thresholds, 1, flat=reconverter())
            fid = fidelity.compare(reference, runtime.predict_all(flat, probes, 1))
            top1 = float(np.mean(runtime.predict_all(flat, x_test, 1)[0].argmax(1) == y_test))
            rows.append({"guard": label, "agreement": fid["top1_agreement"],
                         "kl": fid["kl_divergence"], "ms": _level_seconds(tables) * 1e3,
                         "loss": 100 * (top1_before - top1)})
            return fid
        return fn

    finals = []
    for spec in FLAGS.guards:
        guard = _guard(spec).resolve(probes_lib.resolve(original, config.probe))
        label = _label(guard)
        snapshot = (m.get_weights(), [pl.shift.copy() for pl in layers])
        budget.choose(m, tables, evaluate(label),
                      accept=lambda fid, g=guard: g.miss(reference, fid) is None,
                      profile=profile, refit=prepared.refit, refine=config.refine_steps)
        # The model choose() leaves is the one prune writes: judge it like the candidates.
        evaluate(label)({})
        finals.append(rows.pop())
        m.set_weights(snapshot[0])
        for pl, shift in zip(layers, snapshot[1]):
            pl.shift = shift
    builtin_ms = sum(profile.builtin(targets.conv_shape(pl)) for pl in layers
                     if pl.kind == "conv2d") * 1e3
    unique = list({(round(r["agreement"], 6), round(r["kl"], 6), round(r["ms"], 6)): r
                   for r in rows}.values())
    loss = np.array([r["loss"] for r in unique])
    lines += [f"## {name}", "",
              f"Top-1 of the original: {100 * top1_before:.2f} % (450 test images: one image "
              f"is 0.22 pt). Convs on the builtin kernel: {builtin_ms:.3f} ms predicted "
              f"(host profile, batch 1, one thread; our op priced at {','.join(map(str, threads))} "
              "threads, as by default).", "",
              "What each guard's search ends with (the model `prune` would write, before "
              "the measured fallback):", "",
              "| guard | probe agreement | probe KL | predicted convs | top-1 loss |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for r in finals:
        lines.append(f"| {r['guard']} | {r['agreement']:.3f} | {r['kl']:.3f} | "
                     f"{r['ms']:.3f} ms ({builtin_ms / r['ms']:.2f}x) | {r['loss']:+.2f} pt |")
    lines += ["", f"Every candidate the searches judged ({len(unique)} distinct): how each "
              "probe metric ranks their real top-1 loss (Spearman; a perfect proxy is 1):", "",
              f"- top-1 agreement on the probes: {-_spearman([r['agreement'] for r in unique], loss):.3f}",
              f"- KL divergence on the probes: {_spearman([r['kl'] for r in unique], loss):.3f}",
              "", "Largest real loss among the candidates a guard would accept, and the fastest "
              "of them:", "",
              "| accepts | candidates | largest top-1 loss | fastest predicted convs |",
              "| --- | ---: | ---: | ---: |"]
    for a, k in ((0.9, None), (0.8, None), (0.8, 0.1), (0.8, 0.15), (0.8, 0.2), (0.8, 0.3)):
        ok = [r for r in unique if r["agreement"] >= a and (k is None or r["kl"] <= k)]
        label = f"agreement >= {a:g}" + (f" and KL <= {k:g}" if k is not None else "")
        if ok:
            fastest = min(r["ms"] for r in ok)
            lines.append(f"| {label} | {len(ok)} | {max(r['loss'] for r in ok):+.2f} pt | "
                         f"{fastest:.3f} ms ({builtin_ms / fastest:.2f}x) |")
    lines += ["", "<details><summary>All candidates, by KL</summary>", "",
              "| search | agreement | KL | predicted convs | top-1 loss |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for r in sorted(unique, key=lambda r: r["kl"]):
        lines.append(f"| {r['guard']} | {r['agreement']:.3f} | {r['kl']:.3f} | "
                     f"{r['ms']:.3f} ms | {r['loss']:+.2f} pt |")
    lines += ["", "</details>", ""] + damage_lines


def main(argv):
    del argv
    from hybrid_pruning import console

    console.quiet_libraries()
    lines = ["# Fidelity guard: probe metrics against real accuracy", "",
             bench_results.machine(),
             bench_results.command("fidelity_proxy_bench"), "",
             "Each model's latency search (host profile, default flags) is run once per "
             "guard; every candidate it judges is also scored on the digits test split. "
             "The guard's metrics come from the 128 data-free probes only.", ""]
    for name in FLAGS.models:
        _run(name, lines)
    bench_results.emit(lines, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
