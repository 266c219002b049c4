"""Flatbuffer rewrite: pruned builtin CONV_2D ops become HybridSparseConv2D with packed
weights, and the dense filters leave the file."""

from __future__ import annotations

import dataclasses

import numpy as np

from hybrid_pruning import op_format, tflite_model


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


def _filter_scales(sg, tensor: int, out_c: int) -> np.ndarray | None:
    """An int8 filter's per-output-channel scales (a per-tensor scale broadcast)."""
    q = tflite_model.quantization(sg, tensor)
    if q is None or q[0].size not in (1, out_c) or np.any(q[1] != 0):
        return None
    return np.broadcast_to(q[0], (out_c,)).astype(np.float32)


def conv_filters(model_bytes: bytes) -> list[tuple[int, np.ndarray]]:
    """(op index, OHWI filter) of every builtin CONV_2D with a constant filter; an int8
    filter comes dequantized (float32, its per-channel scales applied)."""
    model = tflite_model.read(model_bytes)
    sg = model.subgraphs[0]
    out = []
    for i, op in enumerate(sg.operators):
        if tflite_model.builtin_code(model, op) == tflite_model.BuiltinOperator.CONV_2D:
            w = tflite_model.constant(model, sg, int(op.inputs[1]))
            if w is not None and w.dtype == np.int8:
                scales = _filter_scales(sg, int(op.inputs[1]), w.shape[0])
                w = None if scales is None else w.astype(np.float32) * scales[:, None, None,
                                                                                None]
            if w is not None:
                out.append((i, w))
    return out


def match_layers(model_bytes: bytes, folded_kernels: dict[str, np.ndarray]) -> dict[int, str]:
    """Maps CONV_2D op index -> Keras layer name by comparing filter contents (tensor names
    after conversion do not reliably carry layer names). Kernels are HWIO, folded. An int8
    filter matches where it is the kernel rounded to its scales, zeros in the same places."""
    model = tflite_model.read(model_bytes)
    sg = model.subgraphs[0]
    matches: dict[int, str] = {}
    for op_index, w in conv_filters(model_bytes):
        op = sg.operators[op_index]
        scales = None
        if sg.tensors[op.inputs[1]].type == tflite_model.TensorType.INT8:
            scales = _filter_scales(sg, int(op.inputs[1]), w.shape[0])
        for name, k in folded_kernels.items():
            ohwi = np.transpose(k, (3, 0, 1, 2))
            if name in matches.values() or ohwi.shape != w.shape:
                continue
            if scales is None:
                same = tflite_model.same_weights(ohwi, w)
            else:
                half = 0.501 * scales[:, None, None, None] + 1e-7
                # Zeros stay zeros; small weights may round to zero too.
                same = bool(np.all(np.abs(ohwi - w) <= half) and np.all(w[ohwi == 0] == 0))
            if same:
                matches[op_index] = name
                break
    return matches


def rewrite(model_bytes: bytes, min_sparsity: float = 1e-6, block_sizes: dict[int, int] | None = None,
            thresholds: dict[int, np.ndarray] | None = None, layer_names: dict[int, str] | None = None,
            dense_below: float = 0.0, only: set[int] | None = None,
            dense_ops: set[int] = frozenset()) -> tuple[bytes, list[ConvOpRecord]]:
    """Replaces every CONV_2D whose filter has at least `min_sparsity` zeros, or that has
    activation thresholds, by our op; except the dense fallback: a filter with less than
    `dense_below` zeros stays CONV_2D, and its thresholds are dropped. `only`: the op
    indices that may be rewritten (the pipeline passes the convs it pruned). `dense_ops`: op
    indices rewritten even without zeros (where our op is faster unpruned)."""
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
        int8 = w is not None and w.dtype == np.int8
        if w is None or w.dtype not in (np.float32, np.int8):
            record.runs_as = "CONV_2D (filter is not a float32 or int8 constant)"
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
        if record.sparsity < min_sparsity and (int8 or thresholds.get(i) is None) and \
                i not in dense_ops:
            record.runs_as = "CONV_2D (dense)"
            continue
        bias = None
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            bias = tflite_model.constant(model, sg, int(op.inputs[2]))
            if bias is None or bias.dtype != (np.int32 if int8 else np.float32):
                record.runs_as = (f"CONV_2D (bias is not an {'int32' if int8 else 'float32'} "
                                  "constant)")
                continue
        name = record.layer or f"conv{i}"
        if int8:
            scales = _filter_scales(sg, int(op.inputs[1]), w.shape[0])
            quantized = all(sg.tensors[t].type == tflite_model.TensorType.INT8 and
                            tflite_model.quantization(sg, int(t)) is not None and
                            tflite_model.quantization(sg, int(t))[0].size == 1
                            for t in (op.inputs[0], op.outputs[0]))
            if scales is None or not quantized:
                record.runs_as = "CONV_2D (int8 quantization our op does not take)"
                continue
            sg.operators[i] = tflite_model.make_hybrid_op(
                model, sg, name, int(op.inputs[0]), int(op.outputs[0]), geometry, w, bias,
                block_sizes.get(i, 1), None, filter_scales=scales)
        else:
            sg.operators[i] = tflite_model.make_hybrid_op(
                model, sg, name, int(op.inputs[0]), int(op.outputs[0]), geometry, w, bias,
                block_sizes.get(i, 1), thresholds.get(i))
        packed = sg.operators[i].inputs[1:4]
        record.packed_bytes = int(sum(
            len(model.buffers[sg.tensors[t].buffer].data) for t in packed))
        record.runs_as = op_format.OP_NAME
    tflite_model.remove_unused_tensors(model)
    return tflite_model.write(model), records
