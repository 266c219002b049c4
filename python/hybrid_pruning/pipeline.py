"""The pruning pipeline: Keras model in, LiteRT flatbuffer with our ops out. Data-free.

Order: probes on the original model; channel removal (near-constant, then near-identical
channels), which rebuilds a smaller Keras model; weight pruning with least-squares re-fit;
activation thresholds; conversion; flatbuffer rewrite; a fidelity check in the interpreter.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from absl import logging

from hybrid_pruning import (budget, convert, fidelity, graph, probes as probes_lib, runtime,
                            tflite_rewrite)
from hybrid_pruning.techniques import (activation_pruning, channel_merging, constant_channels,
                                       weight_pruning)


@dataclasses.dataclass
class PruneConfig:
    weight_error_budget: float = 0.15  # 0 disables weight pruning
    activation_error_budget: float = 0.15  # 0 disables activation pruning
    constant_error_budget: float = 0.05  # 0 disables near-constant channel folding
    merge_error_budget: float = 0.05  # 0 disables near-identical channel merging
    # A global budget (at most one): when set, weight and activation levels of every layer are
    # chosen together for it (budget.py) instead of by the per-layer budgets above.
    target_macs: float | None = None  # fraction of the original MACs to keep (effective)
    min_agreement: float | None = None  # top-1 agreement with the original on probes
    max_kl: float | None = None  # KL divergence from the original on probes
    max_sparsity: float = 0.99
    block_size: int = 1
    # Convs whose weight sparsity ends up below this stay builtin CONV_2D (XNNPACK's dense
    # kernel is faster there; their activation thresholds are dropped, which only brings them
    # back towards the original). 0 = every pruned conv runs our op.
    dense_below: float = 0.0
    probe: str = "bn"
    probe_count: int = 128
    input_range: tuple[float, float] = (0.0, 1.0)
    seed: int = 0
    num_threads: int = 1
    quiet: bool = False


@dataclasses.dataclass
class PruneResult:
    tflite: bytes
    report: dict
    model: object  # the reduced Keras model (fewer channels, zeros in its kernels)



def _to_ours(model, layers, thresholds_by_layer: dict, block_size: int,
             dense_below: float = 0.0):
    """Converts the Keras model and rewrites its pruned convs to our op."""
    flat = convert.to_tflite(model)
    names = tflite_rewrite.match_layers(flat, {pl.name: pl.folded_kernel for pl in layers
                                               if pl.kind == "conv2d"})
    thresholds = {i: thresholds_by_layer[n] for i, n in names.items()
                  if thresholds_by_layer.get(n) is not None}
    return tflite_rewrite.rewrite(flat, block_sizes={i: block_size for i in names},
                                  thresholds=thresholds, layer_names=names,
                                  dense_below=dense_below)


def compress(model, config: PruneConfig) -> PruneResult:
    """Reduces `model` (the object may be modified) and returns the rewritten flatbuffer."""
    from tqdm import tqdm

    start = time.time()
    original_layers, skipped = graph.prunable_layers(model)
    before = {pl.name: (pl.kernel.shape[-1], int(pl.kernel.size), pl.macs)
              for pl in original_layers}
    probes = probes_lib.make_probes(model, config.probe, config.probe_count, config.input_range,
                                    config.seed)
    reference = np.asarray(model.predict(probes, verbose=0))
    dense_size = len(convert.to_tflite(model))
    removed: dict[str, dict[str, int]] = {}
    refused: dict[str, str] = {}
    with tqdm(total=4, desc="reducing", unit="technique", disable=config.quiet) as bar:
        for technique, fn, technique_budget in (
                ("constant", constant_channels.fold_constant_channels,
                 config.constant_error_budget),
                ("merged", channel_merging.merge_channels, config.merge_error_budget)):
            model, plans, refused = fn(model, probes, technique_budget)
            for plan in plans:
                removed.setdefault(plan.chain.producer.name, {})[technique] = len(plan.removed)
            bar.update(1)
        layers, _ = graph.prunable_layers(model)
        inputs = graph.layer_inputs(model, layers, probes)
        global_budget = (config.target_macs, config.min_agreement, config.max_kl)
        if any(v is not None for v in global_budget):
            original_macs = sum(m for _, _, m in before.values())

            def evaluate(thresholds_by_layer):
                flat, _ = _to_ours(model, layers, thresholds_by_layer, config.block_size)
                return fidelity.compare(reference,
                                        runtime.predict(flat, probes, config.num_threads))

            weights, activations, search = budget.allocate(
                model, layers, inputs, probes, reference, evaluate,
                target_macs=None if config.target_macs is None
                else config.target_macs * original_macs,
                min_agreement=config.min_agreement, max_kl=config.max_kl,
                block_size=config.block_size)
            bar.update(2)
        else:
            search = None
            weights = weight_pruning.prune_weights(
                layers, inputs, config.weight_error_budget, config.max_sparsity,
                config.block_size)
            bar.update(1)
            inputs = graph.layer_inputs(model, layers, probes)
            activations = activation_pruning.prune_activations(
                layers, inputs, config.activation_error_budget)
            bar.update(1)
    tflite, records = _to_ours(model, layers, {a.name: a.thresholds for a in activations},
                               config.block_size, config.dense_below)
    runs_as = {r.layer: r.runs_as for r in records if r.layer}
    fid = fidelity.compare(reference, runtime.predict(tflite, probes, config.num_threads))

    rows = []
    for pl, w, a in zip(layers, weights, activations):
        ch_before, params_before, macs_before = before[pl.name]
        ours = runs_as.get(pl.name) == "HybridSparseConv2D"
        act_sparsity = a.activation_sparsity if ours else 0.0
        # A conv left to the builtin kernel computes its zeros too (Dense keeps the budget's
        # convention: its zeros count as removed).
        weight_sparsity = w.sparsity if ours or pl.kind == "dense" else 0.0
        macs_after = pl.macs
        rows.append({
            "layer": pl.name, "kind": pl.kind, "batch_norm_folded": pl.batch_norm is not None,
            "channels_before": int(ch_before), "channels_after": int(pl.kernel.shape[-1]),
            "channels_removed": removed.get(pl.name, {}),
            "parameters_before": params_before,
            "nonzero_parameters": int(np.count_nonzero(pl.kernel)),
            "weight_sparsity": w.sparsity, "weight_error": w.relative_error,
            "activation_sparsity": act_sparsity,
            "natural_activation_sparsity": a.natural_sparsity,
            "activation_thresholds": a.thresholds is not None and ours,
            "activation_error": a.relative_error if ours else 0.0,
            "macs_before": macs_before, "macs_after_dense": macs_after,
            "effective_macs": int(round(macs_after * (1 - weight_sparsity) * (1 - act_sparsity))),
            # What the vector kernels compute: they skip zero weights, not zero activations.
            "vector_kernel_macs": int(round(macs_after * (1 - weight_sparsity))),
            "runs_as": runs_as.get(pl.name, "FULLY_CONNECTED" if pl.kind == "dense"
                                   else "CONV_2D (not matched)"),
        })
    params_before = sum(r["parameters_before"] for r in rows)
    nonzero = sum(r["nonzero_parameters"] for r in rows)
    report = {
        "config": {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in dataclasses.asdict(config).items()},
        "layers": rows,
        "skipped_layers": skipped,
        "channel_removal_refused": refused,
        "totals": {
            "parameters_before": params_before,
            "nonzero_parameters": nonzero,
            "parameter_reduction": 1 - nonzero / params_before,
            "macs_before": sum(r["macs_before"] for r in rows),
            "effective_macs": sum(r["effective_macs"] for r in rows),
            "vector_kernel_macs": sum(r["vector_kernel_macs"] for r in rows),
            "tflite_bytes_dense": dense_size,
            "tflite_bytes": len(tflite),
        },
        "fidelity_on_probes": fid,
        "global_budget_search": search,
        "seconds": time.time() - start,
    }
    logging.info("reduced %d layers in %.1f s", len(layers), report["seconds"])
    return PruneResult(tflite, report, model)
