"""The pruning pipeline: Keras model in, LiteRT flatbuffer with our ops out. Data-free."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from absl import logging

from hybrid_pruning import convert, graph, probes as probes_lib, runtime, tflite_rewrite
from hybrid_pruning.techniques import weight_pruning


@dataclasses.dataclass
class PruneConfig:
    weight_error_budget: float = 0.15
    max_sparsity: float = 0.99
    block_size: int = 1
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


def _macs(pl: graph.PrunableLayer) -> int:
    k = pl.kernel
    if pl.kind == "dense":
        return int(k.size)
    out_h, out_w = (int(d) for d in pl.layer.output.shape[1:3])
    return int(out_h * out_w * k.size)


def _fidelity(reference: np.ndarray, tflite: bytes, probes: np.ndarray, num_threads: int) -> dict:
    it = runtime.make_interpreter(model_content=tflite, num_threads=num_threads)
    inp = it.get_input_details()[0]["index"]
    it.resize_tensor_input(inp, probes.shape)
    it.allocate_tensors()
    it.set_tensor(inp, probes)
    it.invoke()
    out = it.get_tensor(it.get_output_details()[0]["index"]).reshape(reference.shape)
    scale = max(float(np.abs(reference).max()), 1e-12)
    result = {"max_abs_output_error_relative": float(np.abs(out - reference).max() / scale)}
    if reference.ndim == 2 and reference.shape[1] > 1:
        result["top1_agreement"] = float(np.mean(out.argmax(1) == reference.argmax(1)))
    return result


def compress(model, config: PruneConfig) -> PruneResult:
    """Prunes `model` in place and returns the rewritten flatbuffer and a report."""
    from tqdm import tqdm

    start = time.time()
    layers, skipped = graph.prunable_layers(model)
    probes = probes_lib.make_probes(model, config.probe, config.probe_count, config.input_range,
                                    config.seed)
    reference = np.asarray(model.predict(probes, verbose=0))
    inputs = graph.layer_inputs(model, layers, probes)
    dense_size = len(convert.to_tflite(model))
    params_before = [int(pl.kernel.size) for pl in layers]
    with tqdm(total=len(layers), desc="weight pruning", unit="layer", disable=config.quiet) as bar:
        results = weight_pruning.prune_weights(layers, inputs, config.weight_error_budget,
                                               config.max_sparsity, config.block_size,
                                               progress=bar)
    pruned = convert.to_tflite(model)
    names = tflite_rewrite.match_layers(pruned, {pl.name: pl.folded_kernel for pl in layers
                                                 if pl.kind == "conv2d"})
    blocks = {i: config.block_size for i in names}
    tflite, records = tflite_rewrite.rewrite(pruned, block_sizes=blocks, layer_names=names)
    runs_as = {r.layer: r.runs_as for r in records if r.layer}
    fidelity = _fidelity(reference, tflite, probes, config.num_threads)

    rows = []
    for pl, r, n in zip(layers, results, params_before):
        macs = _macs(pl)
        rows.append({
            "layer": pl.name, "kind": pl.kind, "batch_norm_folded": pl.batch_norm is not None,
            "parameters": n, "nonzero_parameters": int(round(n * (1 - r.sparsity))),
            "weight_sparsity": r.sparsity, "relative_output_error": r.relative_error,
            "macs": macs, "effective_macs": int(round(macs * (1 - r.sparsity))),
            "runs_as": runs_as.get(pl.name, "FULLY_CONNECTED" if pl.kind == "dense"
                                   else "CONV_2D (not matched)"),
        })
    total_params = sum(r["parameters"] for r in rows)
    total_nonzero = sum(r["nonzero_parameters"] for r in rows)
    report = {
        "config": {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in dataclasses.asdict(config).items()},
        "layers": rows,
        "skipped_layers": skipped,
        "totals": {
            "pruned_parameters": total_params,
            "nonzero_parameters": total_nonzero,
            "weight_sparsity": 1 - total_nonzero / total_params,
            "macs": sum(r["macs"] for r in rows),
            "effective_macs": sum(r["effective_macs"] for r in rows),
            "tflite_bytes_dense": dense_size,
            "tflite_bytes": len(tflite),
        },
        "fidelity_on_probes": fidelity,
        "seconds": time.time() - start,
    }
    logging.info("pruned %d layers in %.1f s", len(layers), report["seconds"])
    return PruneResult(tflite, report)
