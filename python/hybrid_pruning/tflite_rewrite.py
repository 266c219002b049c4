"""Flatbuffer rewrite: pruned builtin CONV_2D ops become HybridSparseConv2D with packed
weights, and the dense filters leave the file."""

from __future__ import annotations

import dataclasses

import numpy as np

from hybrid_pruning import tflite_model


@dataclasses.dataclass
class ConvOpRecord:
    op_index: int
    output: str
    filter_shape: tuple[int, ...]
    sparsity: float
    runs_as: str  # "HybridSparseConv2D" or "CONV_2D (<reason>)"
    dense_bytes: int
    packed_bytes: int = 0
    layer: str | None = None  # the Keras layer this op came from, when it could be matched


def conv_filters(model_bytes: bytes) -> list[tuple[int, np.ndarray]]:
    """(op index, OHWI filter) of every builtin CONV_2D with a constant filter."""
    model = tflite_model.read(model_bytes)
    sg = model.subgraphs[0]
    out = []
    for i, op in enumerate(sg.operators):
        if tflite_model.builtin_code(model, op) == tflite_model.BuiltinOperator.CONV_2D:
            w = tflite_model.constant(model, sg, int(op.inputs[1]))
            if w is not None:
                out.append((i, w))
    return out


def match_layers(model_bytes: bytes, folded_kernels: dict[str, np.ndarray]) -> dict[int, str]:
    """Maps CONV_2D op index -> Keras layer name by comparing filter contents (tensor names
    after conversion do not reliably carry layer names). Kernels are HWIO, folded."""
    matches: dict[int, str] = {}
    for op_index, w in conv_filters(model_bytes):
        for name, k in folded_kernels.items():
            ohwi = np.transpose(k, (3, 0, 1, 2))
            if name not in matches.values() and tflite_model.same_weights(ohwi, w):
                matches[op_index] = name
                break
    return matches


def rewrite(model_bytes: bytes, min_sparsity: float = 1e-6, block_sizes: dict[int, int] | None = None,
            thresholds: dict[int, np.ndarray] | None = None, layer_names: dict[int, str] | None = None,
            dense_below: float = 0.0, only: set[int] | None = None
            ) -> tuple[bytes, list[ConvOpRecord]]:
    """Replaces every CONV_2D whose filter has at least `min_sparsity` zeros, or that has
    activation thresholds, by our op; except the dense fallback: a filter with less than
    `dense_below` zeros stays CONV_2D, and its thresholds are dropped. `only`: the op
    indices that may be rewritten (the pipeline passes the convs it pruned)."""
    block_sizes = block_sizes or {}
    thresholds = thresholds or {}
    layer_names = layer_names or {}
    model = tflite_model.read(model_bytes)
    if len(model.subgraphs) != 1:
        raise ValueError("only single-subgraph models are rewritten")
    sg = model.subgraphs[0]
    records = []
    for i, op in enumerate(sg.operators):
        if tflite_model.builtin_code(model, op) != tflite_model.BuiltinOperator.CONV_2D:
            continue
        out_name = sg.tensors[op.outputs[0]].name
        out_name = out_name.decode() if isinstance(out_name, bytes) else out_name
        w = tflite_model.constant(model, sg, int(op.inputs[1]))
        record = ConvOpRecord(i, out_name, tuple(sg.tensors[op.inputs[1]].shape), 0.0,
                              "CONV_2D", 0, layer=layer_names.get(i))
        records.append(record)
        if only is not None and i not in only:
            record.runs_as = "CONV_2D (not pruned)"
            continue
        if w is None:
            record.runs_as = "CONV_2D (filter is not a float32 constant)"
            continue
        record.dense_bytes = w.nbytes
        record.sparsity = float(np.mean(w == 0))
        in_shape = sg.tensors[op.inputs[0]].shape
        if in_shape is None or len(in_shape) != 4 or int(in_shape[-1]) != w.shape[-1]:
            # A grouped convolution: its filter sees a slice of the input channels.
            record.runs_as = "CONV_2D (grouped convolution)"
            continue
        geometry = tflite_model.conv_geometry(op, w.shape)
        if geometry is None:
            record.runs_as = "CONV_2D (fused activation or padding not supported by our op)"
            continue
        if record.sparsity < dense_below:
            record.runs_as = "CONV_2D (dense fallback: sparsity below dense_below)"
            continue
        if record.sparsity < min_sparsity and thresholds.get(i) is None:
            record.runs_as = "CONV_2D (dense)"
            continue
        bias = None
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            bias = tflite_model.constant(model, sg, int(op.inputs[2]))
            if bias is None or bias.dtype != np.float32:
                record.runs_as = "CONV_2D (bias is not a float32 constant)"
                continue
        name = record.layer or f"conv{i}"
        sg.operators[i] = tflite_model.make_hybrid_op(
            model, sg, name, int(op.inputs[0]), int(op.outputs[0]), geometry, w, bias,
            block_sizes.get(i, 1), thresholds.get(i))
        packed = sg.operators[i].inputs[1:4]
        record.packed_bytes = int(sum(
            len(model.buffers[sg.tensors[t].buffer].data) for t in packed))
        record.runs_as = "HybridSparseConv2D"
    tflite_model.remove_unused_tensors(model)
    return tflite_model.write(model), records
